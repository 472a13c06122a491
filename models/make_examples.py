#!/usr/bin/env python3
"""Build sluice's own small example models and their test fixtures.

Deterministic: fixed seeds, single-threaded training, so running it twice gives
byte-identical files. Pinned library versions: models/requirements.txt.

Model repository (Triton layout, next to this file):

  credit/1/model.onnx  LightGBM binary classifier, 10 features, 40 trees, 15 leaves
  credit/2/model.onnx  same data, retrained with another seed and slightly different params
  credit/model.toml    example per-model settings (runtime, version policy)
  digits/1/model.onnx  scikit-learn MLPClassifier (32,) on the bundled digits data (64 features)
  types/1/model.onnx   hand-built graph exercising FP64, INT32, BOOL and BYTES (string) tensors

credit and digits: input `input` FP32 [N, F]; outputs `label` INT64 [N] and
`probabilities` FP32 [N, C] (ZipMap disabled).

Fixtures (gateway/tests/fixtures/examples/), per model and version:

  <model>_v<version>_request_b1.json / _b4.json   KServe v2 JSON request bodies
  <model>_v<version>_expected_b1.json / _b4.json  onnxruntime's outputs for them

Usage:  python3 models/make_examples.py     (from anywhere; paths are relative to this file)
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

# Single-threaded BLAS/OpenMP before numpy loads: deterministic and cheap.
for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

MODELS = Path(__file__).resolve().parent
ROOT = MODELS.parent
FIXTURES = ROOT / "gateway" / "tests" / "fixtures" / "examples"
TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}  # onnxmltools (LightGBM) caps at 15
IR_VERSION = 8  # the IR version that goes with opset 15 (what skl2onnx writes too)

CREDIT_TOML = """\
# Optional per-model settings. Everything here has a default; see config/sluice.toml.
# runtime: "auto" (ONNX Runtime when its library is present, else tract), "ort" or "tract".
# runtime = "auto"

# Which versions to keep loaded: { latest = N }, "all", or { specific = [1, 2] }.
# sluice's default is latest 2, so the previous version is the instant rollback target.
version_policy = { latest = 2 }

# Data expectations checked on every request before the model runs (see the README's "Data
# expectations"): "reject" answers 400 naming the row, feature and rule; "flag" serves, counts
# sluice_expectation_violations_total and marks the prediction-log record.
# [expectations]
# on_violation = "flag"
# derive = "profile"        # training range from the version's profile.json, widened by margin
# margin = 0.1
# [expectations.features.f2]
# min = -10
# max = 10
"""

FIXTURES_README = """\
# Example-model fixtures

KServe v2 JSON request bodies (`<model>_v<version>_request_b{1,4}.json`) for the example models in
`models/` (credit v1/v2, digits v1, types v1), and onnxruntime's outputs for them
(`..._expected_b{1,4}.json`, flat `data`, v2 datatype names). Do not edit by hand:
`python3 models/make_examples.py` regenerates them together with the models (deterministically).
"""

# v2 datatype names for the numpy dtypes these models use.
V2_DTYPE = {
    np.dtype("float32"): "FP32",
    np.dtype("float64"): "FP64",
    np.dtype("int32"): "INT32",
    np.dtype("int64"): "INT64",
    np.dtype("bool"): "BOOL",
    np.dtype("object"): "BYTES",  # onnxruntime returns string tensors as object arrays of str
}


# ---------------------------------------------------------------------------------------------
# credit: LightGBM binary classifier
# ---------------------------------------------------------------------------------------------

def _credit_data():
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=3000,
        n_features=10,
        n_informative=6,
        n_redundant=2,
        weights=[0.75, 0.25],  # credit-default-like imbalance
        flip_y=0.02,
        random_state=11,
    )
    return X.astype(np.float32), y.astype(np.int64)


N_TRAIN_CREDIT = 2500  # rows after this are held out; fixtures come from them


def _credit(version: int):
    import lightgbm as lgb
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    X, y = _credit_data()
    params = dict(
        n_estimators=40,
        num_leaves=15,
        n_jobs=1,
        deterministic=True,
        force_row_wise=True,
        verbose=-1,
    )
    if version == 1:
        params.update(learning_rate=0.1, random_state=1)
    else:
        # Retrained: another seed, row bagging and feature subsampling, a bit faster learning.
        params.update(
            learning_rate=0.12,
            random_state=2,
            subsample=0.8,
            subsample_freq=1,
            colsample_bytree=0.9,
            min_child_samples=15,
        )
    clf = lgb.LGBMClassifier(**params)
    clf.fit(X[:N_TRAIN_CREDIT], y[:N_TRAIN_CREDIT])
    onx = convert_lightgbm(
        clf,
        name="credit",
        initial_types=[("input", FloatTensorType([None, X.shape[1]]))],
        zipmap=False,
        target_opset=TARGET_OPSET[""],  # onnxmltools takes an int here
    )
    # onnxmltools declares `label` as shape [1]; make it [N] like `probabilities`.
    for o in onx.graph.output:
        if o.name == "label":
            dims = o.type.tensor_type.shape.dim
            del dims[:]
            dims.add()  # unknown batch dim, as skl2onnx writes it
    X_ho, y_ho = X[N_TRAIN_CREDIT:], y[N_TRAIN_CREDIT:]
    # Fixture rows: held out, alternating true class 0 / 1 so batch 4 has both.
    zeros = np.flatnonzero(y_ho == 0)[:2]
    ones = np.flatnonzero(y_ho == 1)[:2]
    rows = np.array([zeros[0], ones[0], zeros[1], ones[1]])
    desc = (
        f"lightgbm.LGBMClassifier(n_estimators=40, num_leaves=15, "
        f"learning_rate={params['learning_rate']}, random_state={params['random_state']})"
    )
    return onx, X_ho, y_ho, clf.predict_proba(X_ho), X_ho[rows], desc


# ---------------------------------------------------------------------------------------------
# digits: small MLP
# ---------------------------------------------------------------------------------------------

N_TRAIN_DIGITS = 1500


def _digits():
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    perm = np.random.RandomState(0).permutation(len(X))
    X, y = X[perm], y[perm].astype(np.int64)
    clf = MLPClassifier(hidden_layer_sizes=(32,), max_iter=400, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning is harmless here
        clf.fit(X[:N_TRAIN_DIGITS], y[:N_TRAIN_DIGITS])
    onx = convert_sklearn(
        clf,
        name="digits",
        initial_types=[("input", FloatTensorType([None, 64]))],
        options={id(clf): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    X_ho, y_ho = X[N_TRAIN_DIGITS:], y[N_TRAIN_DIGITS:]
    desc = "sklearn.MLPClassifier(hidden_layer_sizes=(32,), random_state=0)"
    return onx, X_ho, y_ho, clf.predict_proba(X_ho), X_ho[:4], desc


# ---------------------------------------------------------------------------------------------
# types: hand-built datatype exerciser
# ---------------------------------------------------------------------------------------------

def _types():
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    N = "N"
    inputs = [
        helper.make_tensor_value_info("x_fp64", TensorProto.DOUBLE, [N, 3]),
        helper.make_tensor_value_info("x_i32", TensorProto.INT32, [N, 2]),
        helper.make_tensor_value_info("flag", TensorProto.BOOL, [N, 1]),
        helper.make_tensor_value_info("tag", TensorProto.STRING, [N, 1]),
    ]
    outputs = [
        helper.make_tensor_value_info("fp64_doubled", TensorProto.DOUBLE, [N, 3]),
        helper.make_tensor_value_info("i32_plus1", TensorProto.INT32, [N, 2]),
        helper.make_tensor_value_info("flag_not", TensorProto.BOOL, [N, 1]),
        helper.make_tensor_value_info("tag_out", TensorProto.STRING, [N, 1]),
    ]
    initializers = [
        numpy_helper.from_array(np.array(2.0, dtype=np.float64), name="two_fp64"),
        numpy_helper.from_array(np.array(1, dtype=np.int32), name="one_i32"),
    ]
    nodes = [
        helper.make_node("Mul", ["x_fp64", "two_fp64"], ["fp64_doubled"], name="double_fp64"),
        helper.make_node("Add", ["x_i32", "one_i32"], ["i32_plus1"], name="plus1_i32"),
        helper.make_node("Not", ["flag"], ["flag_not"], name="not_flag"),
        helper.make_node("Identity", ["tag"], ["tag_out"], name="identity_tag"),
    ]
    graph = helper.make_graph(nodes, "types", inputs, outputs, initializer=initializers)
    onx = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", TARGET_OPSET[""])],
        producer_name="sluice-make_examples",
        producer_version="1",
        doc_string="sluice example: one simple op per datatype (FP64, INT32, BOOL, BYTES).",
    )
    onx.ir_version = IR_VERSION
    onnx.checker.check_model(onx, full_check=True)

    # Values chosen to catch lossy handling: FP64 digits beyond FP32, INT32 near the max
    # (no overflow after +1), negative numbers, an empty string and non-ASCII text.
    x_fp64 = np.array(
        [
            [1.0000000000000002, -2.5, 0.1],
            [1e300, -1e-300, 3.141592653589793],
            [0.0, -0.0, 123456789.123456789],
            [-7.25, 2.0 ** 53, 1.0 / 3.0],
        ],
        dtype=np.float64,
    )
    x_i32 = np.array([[0, -1], [2147483646, -2147483648], [41, -42], [7, 100000]], dtype=np.int32)
    flag = np.array([[True], [False], [False], [True]], dtype=np.bool_)
    tag = np.array([["sluice"], [""], ["héllo wörld ✓"], ['a,b "quoted"']], dtype=object)
    feeds = {"x_fp64": x_fp64, "x_i32": x_i32, "flag": flag, "tag": tag}
    expected = {
        "fp64_doubled": x_fp64 * 2.0,
        "i32_plus1": x_i32 + np.int32(1),
        "flag_not": ~flag,
        "tag_out": tag,
    }
    return onx, feeds, expected


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------

def _to_json_list(a: np.ndarray) -> list:
    flat = a.reshape(-1)
    if a.dtype == np.float32:
        # float(np.float32) is the shortest decimal that round-trips through float64;
        # parsing it back to float32 is exact.
        return [float(v) for v in flat]
    if a.dtype == object:
        return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in flat]
    return flat.tolist()  # float64 (repr round-trips), ints, bools -> true/false


def _v2_tensors(names, arrays) -> list:
    return [
        {
            "name": n,
            "shape": list(a.shape),
            "datatype": V2_DTYPE[a.dtype],
            "data": _to_json_list(a),
        }
        for n, a in zip(names, arrays)
    ]


def _write_json(path: Path, obj) -> None:
    # allow_nan=False: a NaN or Infinity would not be valid JSON.
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def _session(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _save_model(onx, name: str, version: int) -> Path:
    import onnx

    onnx.checker.check_model(onx)
    path = MODELS / name / str(version) / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return path


def _describe(name, version, path, sess, desc):
    ins = [(i.name, i.type, i.shape) for i in sess.get_inputs()]
    outs = [(o.name, o.type, o.shape) for o in sess.get_outputs()]
    print(f"[{name} v{version}] {desc}")
    print(f"  file {path.relative_to(ROOT)}: {path.stat().st_size} bytes")
    print(f"  inputs  {ins}")
    print(f"  outputs {outs}")


def _second_runtime(onx, feeds, ort_outs) -> str:
    """Cross-check with the ONNX reference evaluator (pure Python, ships with onnx)."""
    try:
        from onnx.reference import ReferenceEvaluator

        ref_outs = ReferenceEvaluator(onx).run(None, feeds)
        parts = []
        for r, o in zip(ref_outs, ort_outs):
            r = np.asarray(r)
            if o.dtype.kind == "f":
                parts.append(f"max|diff|={float(np.max(np.abs(r - o))):.1e}")
            else:
                parts.append(f"equal={bool(np.array_equal(r.astype(o.dtype), o))}")
        return "onnx.reference: " + ", ".join(parts)
    except Exception as e:  # noqa: BLE001
        return f"onnx.reference failed: {type(e).__name__}: {e}"


def _classifier(name, version, build) -> None:
    onx, X_ho, y_ho, ref_proba, fixture_x, desc = build()
    path = _save_model(onx, name, version)
    sess = _session(path)
    _describe(name, version, path, sess, desc)
    out_names = [o.name for o in sess.get_outputs()]
    assert [i.name for i in sess.get_inputs()] == ["input"], sess.get_inputs()
    assert out_names == ["label", "probabilities"], out_names

    label, proba = sess.run(None, {"input": X_ho})
    max_abs = float(np.max(np.abs(proba - ref_proba)))
    acc = float(np.mean(label == y_ho))
    print(f"  held-out rows {len(X_ho)}: accuracy {acc:.4f}, max |ort - lib| proba {max_abs:.2e}")
    assert label.dtype == np.int64 and label.shape == (len(X_ho),)
    assert proba.dtype == np.float32 and proba.shape[0] == len(X_ho)
    assert max_abs < 1e-4, max_abs
    print("  second runtime:", _second_runtime(onx, {"input": X_ho[:64]}, [label[:64], proba[:64]]))

    for b in (1, 4):
        x = np.ascontiguousarray(fixture_x[:b], dtype=np.float32)
        stem = f"{name}_v{version}"
        _write_json(FIXTURES / f"{stem}_request_b{b}.json",
                    {"inputs": _v2_tensors(["input"], [x])})
        res = sess.run(None, {"input": x})
        _write_json(FIXTURES / f"{stem}_expected_b{b}.json",
                    {"outputs": _v2_tensors(out_names, res)})
    print(f"  fixture labels (b4): {sess.run(None, {'input': fixture_x[:4]})[0].tolist()}")


def _types_model() -> None:
    onx, feeds, expected = _types()
    path = _save_model(onx, "types", 1)
    sess = _session(path)
    _describe("types", 1, path, sess, "hand-built: Mul / Add / Not / Identity")
    in_names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]
    for b in (1, 4):
        f = {k: v[:b] for k, v in feeds.items()}
        res = sess.run(None, f)
        for n, r in zip(out_names, res):
            e = expected[n][:b]
            assert r.shape == e.shape and np.array_equal(r, e), (n, r, e)
            if n != "tag_out":
                assert r.dtype == e.dtype, (n, r.dtype, e.dtype)
        _write_json(FIXTURES / f"types_v1_request_b{b}.json",
                    {"inputs": _v2_tensors(in_names, [f[n] for n in in_names])})
        _write_json(FIXTURES / f"types_v1_expected_b{b}.json",
                    {"outputs": _v2_tensors(out_names, res)})
    print("  onnxruntime outputs match numpy for batch 1 and 4")
    print("  second runtime:", _second_runtime(onx, feeds, sess.run(None, feeds)))


def main() -> int:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    _classifier("credit", 1, lambda: _credit(1))
    _classifier("credit", 2, lambda: _credit(2))
    _classifier("digits", 1, _digits)
    _types_model()
    (MODELS / "credit" / "model.toml").write_text(CREDIT_TOML)
    (FIXTURES / "README.md").write_text(FIXTURES_README)

    import lightgbm, onnx, onnxmltools, onnxruntime, skl2onnx, sklearn  # noqa: E401

    print("generated with: python %s, numpy %s, scikit-learn %s, lightgbm %s, skl2onnx %s, "
          "onnxmltools %s, onnx %s, onnxruntime %s" % (
              sys.version.split()[0], np.__version__, sklearn.__version__, lightgbm.__version__,
              skl2onnx.__version__, onnxmltools.__version__, onnx.__version__,
              onnxruntime.__version__))
    print(f"wrote {MODELS.relative_to(ROOT)}/ and {FIXTURES.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
