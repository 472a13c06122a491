#!/usr/bin/env python3
"""Build sluice-trees' LightGBM and XGBoost test fixtures.

Deterministic: fixed seeds, one thread, so running it twice gives the same files. Pinned
versions: requirements-fixtures.txt next to this file (python 3.11).

For each of lgbm_{binary,multiclass,regression} and xgb_{binary,multiclass,regression}, in
tests/fixtures/:

  <name>.txt / <name>.json   the library's own model file (LightGBM text, XGBoost JSON)
  <name>.onnx                its conversion by onnxmltools (zipmap off)
  <name>_expected.npy        the library's own predictions on sample.npy: probabilities
                             [N, C] for classifiers (float64 for LightGBM, float32 for
                             XGBoost), values [N, 1] for regression
  sample.npy                 float32 [200, 8] rows, about 5% NaN (shared by every model)
  MANIFEST.json              versions and shapes

Usage:  python3 crates/trees/make_fixtures.py   (paths are relative to this file)
"""
from __future__ import annotations

import json
import os
import platform
import warnings
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "tests" / "fixtures"
FEATURES = 8
SAMPLE_ROWS = 200
TARGET_OPSET = {"": 15, "ai.onnx.ml": 3}  # onnxmltools takes the int for ""


def data(kind: str, seed: int):
    """Training rows with missing values, and their targets."""
    from sklearn.datasets import make_classification, make_regression

    if kind == "regression":
        x, y = make_regression(n_samples=1500, n_features=FEATURES, n_informative=6,
                               noise=5.0, random_state=seed)
    else:
        classes = 2 if kind == "binary" else 3
        x, y = make_classification(n_samples=1500, n_features=FEATURES, n_informative=6,
                                   n_redundant=1, n_classes=classes, random_state=seed)
    rng = np.random.default_rng(seed)
    x = x.astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    return x, y


def sample() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = rng.normal(0.0, 1.5, size=(SAMPLE_ROWS, FEATURES)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan
    # Exact zeros too: LightGBM treats them specially under some missing types.
    x[rng.random(x.shape) < 0.03] = 0.0
    return x


def lightgbm_models(x_sample):
    import lightgbm as lgb
    from onnxmltools import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    out = {}
    params = dict(n_estimators=20, num_leaves=15, learning_rate=0.2, random_state=3,
                  n_jobs=1, deterministic=True, force_row_wise=True, verbose=-1)
    for kind, seed in (("binary", 11), ("multiclass", 12), ("regression", 13)):
        x, y = data(kind, seed)
        model = (lgb.LGBMRegressor(**params) if kind == "regression"
                 else lgb.LGBMClassifier(**params))
        model.fit(x, y)
        name = f"lgbm_{kind}"
        model.booster_.save_model(str(FIXTURES / f"{name}.txt"))
        if kind == "regression":
            expected = model.predict(x_sample.astype(np.float64)).reshape(-1, 1)
        else:
            expected = model.predict_proba(x_sample.astype(np.float64))
        np.save(FIXTURES / f"{name}_expected.npy", np.ascontiguousarray(expected, dtype=np.float64))
        onnx_model = convert_lightgbm(model, initial_types=[("input", FloatTensorType([None, FEATURES]))],
                                      target_opset=TARGET_OPSET[""], zipmap=False)
        onnx_model.graph.name = name  # the converter's default is a random uuid
        (FIXTURES / f"{name}.onnx").write_bytes(onnx_model.SerializeToString())
        out[name] = {"model": f"{name}.txt", "expected_shape": list(expected.shape)}
    return out


def xgboost_models(x_sample):
    import xgboost as xgb
    from onnxmltools import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    out = {}
    params = dict(n_estimators=20, max_depth=4, learning_rate=0.3, random_state=3, n_jobs=1,
                  tree_method="hist")
    for kind, seed in (("binary", 21), ("multiclass", 22), ("regression", 23)):
        x, y = data(kind, seed)
        model = xgb.XGBRegressor(**params) if kind == "regression" else xgb.XGBClassifier(**params)
        model.fit(x, y)
        name = f"xgb_{kind}"
        model.get_booster().save_model(str(FIXTURES / f"{name}.json"))
        if kind == "regression":
            expected = model.predict(x_sample).reshape(-1, 1)
        else:
            expected = model.predict_proba(x_sample)
        np.save(FIXTURES / f"{name}_expected.npy", np.ascontiguousarray(expected, dtype=np.float32))
        try:
            onnx_model = convert_xgboost(model, initial_types=[("input", FloatTensorType([None, FEATURES]))],
                                         target_opset=TARGET_OPSET[""])
            onnx_model.graph.name = name  # the converter's default is a random uuid
            (FIXTURES / f"{name}.onnx").write_bytes(onnx_model.SerializeToString())
            onnx_file = f"{name}.onnx"
        except Exception as e:  # recorded, not fatal: the native file is the point
            onnx_file = f"conversion failed: {type(e).__name__}: {e}"
        out[name] = {"model": f"{name}.json", "onnx": onnx_file,
                     "expected_shape": list(expected.shape)}
    return out


def main():
    warnings.filterwarnings("ignore")
    FIXTURES.mkdir(parents=True, exist_ok=True)
    x_sample = sample()
    np.save(FIXTURES / "sample.npy", x_sample)
    models = {}
    models.update(lightgbm_models(x_sample))
    models.update(xgboost_models(x_sample))
    import lightgbm, onnx, onnxmltools, onnxruntime, sklearn, xgboost  # noqa: E401

    manifest = {
        "generated_with": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "lightgbm": lightgbm.__version__,
            "xgboost": xgboost.__version__,
            "onnx": onnx.__version__,
            "onnxmltools": onnxmltools.__version__,
            "onnxruntime": onnxruntime.__version__,
            "target_opset": TARGET_OPSET,
        },
        "sample": {"file": "sample.npy", "shape": [SAMPLE_ROWS, FEATURES]},
        "models": models,
    }
    (FIXTURES / "MANIFEST.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
