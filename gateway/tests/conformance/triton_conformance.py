#!/usr/bin/env python3
"""Protocol conformance of a running sluice, checked with NVIDIA's official Triton client.

Everything goes through `tritonclient.http` and `tritonclient.grpc` exactly as an application
would use them: health, metadata, inference with binary and JSON tensors, output selection, and
the errors a client must be able to read. Outputs are compared with onnxruntime's reference
outputs in tests/fixtures with a tolerance of 1e-5 (relative, absolute below 1).

    triton_conformance.py --suite examples --http-url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001
    triton_conformance.py --suite bench ... [--skip-model churn]

`--suite examples` expects a server on the repository in models/, `--suite bench` one on
tests/fixtures/bench/repo. `--skip-model` leaves out a model the server is known not to serve
(the tree ensembles when only tract is available). Exits non-zero if any check fails.
"""

import argparse
import json
import sys
import unittest
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

TOLERANCE = 1e-5

# (model, version, fixture stem) and the batch sizes with fixtures, per suite.
SUITES = {
    "examples": {
        "cases": [
            ("credit", "1", "examples/credit_v1"),
            ("credit", "2", "examples/credit_v2"),
            ("digits", "1", "examples/digits_v1"),
            ("types", "1", "examples/types_v1"),
        ],
        "batches": [1, 4],
        # Unversioned requests go to the newest loaded version.
        "latest": {"credit": "2", "digits": "1", "types": "1"},
    },
    "bench": {
        "cases": [
            ("churn", "1", "bench/churn"),
            ("mlp", "1", "bench/mlp"),
            ("mlp", "2", "bench/mlp_v2"),
        ],
        "batches": [1, 8],
        "latest": {"churn": "1", "mlp": "2"},
    },
}

NUMPY_TYPES = {
    "BOOL": np.bool_,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}

# Typed-contents field for each datatype (gRPC `InferTensorContents`).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

ARGS = None  # set in main()


def fixture(stem, kind, batch):
    return json.loads((ARGS.fixtures / f"{stem}_{kind}_b{batch}.json").read_text())


def cases():
    suite = SUITES[ARGS.suite]
    return [c for c in suite["cases"] if c[0] not in ARGS.skip_model]


def batches():
    return SUITES[ARGS.suite]["batches"]


def to_numpy(tensor):
    """A fixture tensor (v2 JSON, flat data) as the numpy array a client would send."""
    datatype = tensor["datatype"]
    if datatype == "BYTES":
        flat = [s.encode() if isinstance(s, str) else s for s in tensor["data"]]
        array = np.array(flat, dtype=np.object_)
    else:
        array = np.array(tensor["data"], dtype=NUMPY_TYPES[datatype])
    return array.reshape(tensor["shape"])


def as_text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def assert_output(test, got, want, context):
    """`got` (numpy, from the client) matches the fixture output `want`."""
    name = want["name"]
    test.assertIsNotNone(got, f"{context}: output {name} missing")
    test.assertEqual(list(got.shape), want["shape"], f"{context}: {name} shape")
    flat = got.reshape(-1).tolist()
    test.assertEqual(len(flat), len(want["data"]), f"{context}: {name} length")
    for i, (g, w) in enumerate(zip(flat, want["data"])):
        if want["datatype"] == "BYTES":
            test.assertEqual(as_text(g), as_text(w), f"{context}: {name}[{i}]")
        elif want["datatype"] == "BOOL":
            test.assertEqual(bool(g), bool(w), f"{context}: {name}[{i}]")
        else:
            limit = TOLERANCE * max(abs(w), 1.0)
            test.assertLessEqual(abs(g - w), limit, f"{context}: {name}[{i}] = {g}, expected {w}")


def expected_dtype(test, got, want, context):
    if want["datatype"] != "BYTES":
        test.assertEqual(got.dtype, np.dtype(NUMPY_TYPES[want["datatype"]]), context)


def bad_shape_input(tensor):
    """The tensor with one extra element on its last axis: a shape the model refuses."""
    array = to_numpy(tensor)
    pad = [(0, 0)] * (array.ndim - 1) + [(0, 1)]
    if array.dtype == np.object_:
        return np.pad(array, pad, constant_values=b"")
    return np.pad(array, pad)


class Common:
    """Checks run identically over both clients; subclasses supply the client specifics."""

    client = None

    def infer(self, model, version, inputs, outputs=None, **kwargs):
        raise NotImplementedError

    def response_version(self, result):
        raise NotImplementedError

    def test_server_live_and_ready(self):
        self.assertTrue(self.client.is_server_live())
        self.assertTrue(self.client.is_server_ready())

    def test_server_metadata(self):
        meta = self.server_metadata()
        self.assertEqual(meta["name"], "sluice")
        self.assertIn("binary_tensor_data", meta["extensions"])

    def test_model_ready(self):
        for model, version, _ in cases():
            with self.subTest(model=model, version=version):
                self.assertTrue(self.client.is_model_ready(model, version))
                self.assertTrue(self.client.is_model_ready(model))
        self.assertFalse(self.client.is_model_ready("no_such_model"))
        for model, _, _ in cases():
            self.assertFalse(self.client.is_model_ready(model, "999"))

    def test_model_metadata(self):
        latest = SUITES[ARGS.suite]["latest"]
        for model, version, stem in cases():
            with self.subTest(model=model, version=version):
                meta = self.model_metadata(model, version)
                self.assertEqual(meta["name"], model)
                self.assertEqual(meta["versions"], [version])
                request = fixture(stem, "request", 1)
                expected = fixture(stem, "expected", 1)
                self.assertEqual(
                    [(i["name"], i["datatype"]) for i in meta["inputs"]],
                    [(i["name"], i["datatype"]) for i in request["inputs"]],
                )
                self.assertEqual(
                    [(o["name"], o["datatype"]) for o in meta["outputs"]],
                    [(o["name"], o["datatype"]) for o in expected["outputs"]],
                )
                for declared, sent in zip(meta["inputs"], request["inputs"]):
                    shape = [int(d) for d in declared["shape"]]
                    self.assertEqual(len(shape), len(sent["shape"]), declared["name"])
                    for d, s in zip(shape, sent["shape"]):
                        self.assertIn(d, (-1, s), declared["name"])
                unversioned = self.model_metadata(model, "")
                self.assertIn(latest[model], unversioned["versions"])

    def test_metadata_of_unknown_model_is_an_error(self):
        with self.assertRaises(InferenceServerException) as caught:
            self.model_metadata("no_such_model", "")
        self.assertIn("unknown model 'no_such_model'", caught.exception.message())

    def run_fixtures(self, **encoding):
        for model, version, stem in cases():
            for batch in batches():
                context = f"{self.protocol} {model} v{version} b{batch} {encoding}"
                with self.subTest(context=context):
                    request = fixture(stem, "request", batch)
                    expected = fixture(stem, "expected", batch)
                    arrays = {t["name"]: (t["datatype"], to_numpy(t)) for t in request["inputs"]}
                    result = self.infer(model, version, arrays, **encoding)
                    self.assertEqual(self.response_version(result), version, context)
                    for want in expected["outputs"]:
                        got = result.as_numpy(want["name"])
                        assert_output(self, got, want, context)
                        expected_dtype(self, got, want, context)

    def test_unversioned_infer_uses_the_latest_version(self):
        latest = SUITES[ARGS.suite]["latest"]
        for model, version, stem in cases():
            if latest[model] != version:
                continue
            request = fixture(stem, "request", 1)
            expected = fixture(stem, "expected", 1)
            arrays = {t["name"]: (t["datatype"], to_numpy(t)) for t in request["inputs"]}
            result = self.infer(model, "", arrays)
            self.assertEqual(self.response_version(result), version)
            for want in expected["outputs"]:
                assert_output(self, result.as_numpy(want["name"]), want, f"{model} unversioned")

    def test_requested_output_selection(self):
        for model, version, stem in cases():
            with self.subTest(model=model, version=version):
                request = fixture(stem, "request", 1)
                expected = fixture(stem, "expected", 1)
                arrays = {t["name"]: (t["datatype"], to_numpy(t)) for t in request["inputs"]}
                wanted = expected["outputs"][-1]
                others = [o["name"] for o in expected["outputs"][:-1]]
                result = self.infer(model, version, arrays, outputs=[wanted["name"]])
                assert_output(self, result.as_numpy(wanted["name"]), wanted, "selected")
                for other in others:
                    self.assertIsNone(result.as_numpy(other), f"{other} was not requested")

    def test_unknown_model_is_an_error(self):
        model, version, stem = cases()[0]
        request = fixture(stem, "request", 1)
        arrays = {t["name"]: (t["datatype"], to_numpy(t)) for t in request["inputs"]}
        with self.assertRaises(InferenceServerException) as caught:
            self.infer("no_such_model", "", arrays)
        self.assertIn("unknown model 'no_such_model'", caught.exception.message())
        self.assertIn(self.not_found_status, caught.exception.status())

    def test_bad_shape_is_an_error(self):
        for model, version, stem in cases():
            with self.subTest(model=model):
                request = fixture(stem, "request", 1)
                arrays = {t["name"]: (t["datatype"], to_numpy(t)) for t in request["inputs"]}
                first = request["inputs"][0]
                arrays[first["name"]] = (first["datatype"], bad_shape_input(first))
                with self.assertRaises(InferenceServerException) as caught:
                    self.infer(model, version, arrays)
                message = caught.exception.message()
                self.assertIn(f"input '{first['name']}': expected shape", message)
                self.assertIn(self.bad_request_status, caught.exception.status())


class HttpConformance(Common, unittest.TestCase):
    protocol = "http"
    not_found_status = "404"
    bad_request_status = "400"

    @classmethod
    def setUpClass(cls):
        cls.client = httpclient.InferenceServerClient(ARGS.http_url)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()

    def server_metadata(self):
        return self.client.get_server_metadata()

    def model_metadata(self, model, version):
        return self.client.get_model_metadata(model, version)

    def infer(self, model, version, inputs, outputs=None, binary_in=True, binary_out=True):
        tensors = []
        for name, (datatype, array) in inputs.items():
            tensor = httpclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=binary_in)
            tensors.append(tensor)
        requested = None
        if outputs is not None or not binary_out:
            names = outputs
            if names is None:
                names = [o["name"] for o in self.model_metadata(model, version)["outputs"]]
            requested = [httpclient.InferRequestedOutput(n, binary_data=binary_out) for n in names]
        return self.client.infer(model, tensors, model_version=version, outputs=requested)

    def response_version(self, result):
        return result.get_response()["model_version"]

    def test_infer_binary_in_binary_out(self):
        self.run_fixtures(binary_in=True, binary_out=True)

    def test_infer_json_in_json_out(self):
        self.run_fixtures(binary_in=False, binary_out=False)

    def test_infer_binary_in_json_out(self):
        self.run_fixtures(binary_in=True, binary_out=False)

    def test_infer_json_in_binary_out(self):
        self.run_fixtures(binary_in=False, binary_out=True)

    def test_binary_outputs_are_framed(self):
        model, version, stem = cases()[0]
        request = fixture(stem, "request", 1)
        arrays = {t["name"]: (t["datatype"], to_numpy(t)) for t in request["inputs"]}
        result = self.infer(model, version, arrays, binary_out=True)
        for output in result.get_response()["outputs"]:
            self.assertIn("binary_data_size", output.get("parameters", {}), output)
            self.assertNotIn("data", output)
        json_result = self.infer(model, version, arrays, binary_out=False)
        for output in json_result.get_response()["outputs"]:
            self.assertIn("data", output)

    def test_mixed_output_encodings(self):
        """One output binary, the others JSON, in the same answer."""
        model, version, stem = cases()[-1]
        request = fixture(stem, "request", 1)
        expected = fixture(stem, "expected", 1)
        tensors = []
        for t in request["inputs"]:
            tensor = httpclient.InferInput(t["name"], t["shape"], t["datatype"])
            tensor.set_data_from_numpy(to_numpy(t), binary_data=True)
            tensors.append(tensor)
        names = [o["name"] for o in expected["outputs"]]
        requested = [
            httpclient.InferRequestedOutput(n, binary_data=(i == 0)) for i, n in enumerate(names)
        ]
        result = self.client.infer(model, tensors, model_version=version, outputs=requested)
        for want in expected["outputs"]:
            assert_output(self, result.as_numpy(want["name"]), want, "mixed")


class GrpcConformance(Common, unittest.TestCase):
    protocol = "grpc"
    not_found_status = "NOT_FOUND"
    bad_request_status = "INVALID_ARGUMENT"

    @classmethod
    def setUpClass(cls):
        cls.client = grpcclient.InferenceServerClient(ARGS.grpc_url)
        cls.channel = grpc.insecure_channel(ARGS.grpc_url)
        cls.stub = service_pb2_grpc.GRPCInferenceServiceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.channel.close()

    def server_metadata(self):
        return self.client.get_server_metadata(as_json=True)

    def model_metadata(self, model, version):
        return self.client.get_model_metadata(model, version, as_json=True)

    def infer(self, model, version, inputs, outputs=None):
        tensors = []
        for name, (datatype, array) in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        requested = None
        if outputs is not None:
            requested = [grpcclient.InferRequestedOutput(n) for n in outputs]
        return self.client.infer(model, tensors, model_version=version, outputs=requested)

    def response_version(self, result):
        return result.get_response().model_version

    def test_infer_raw_contents(self):
        self.run_fixtures()

    def test_infer_typed_contents(self):
        """Inputs in `InferTensorContents` instead of `raw_input_contents` (the Python client
        always sends raw, other clients do not), answered in `raw_output_contents`."""
        for model, version, stem in cases():
            for batch in batches():
                context = f"typed {model} v{version} b{batch}"
                with self.subTest(context=context):
                    request = fixture(stem, "request", batch)
                    expected = fixture(stem, "expected", batch)
                    message = service_pb2.ModelInferRequest(
                        model_name=model, model_version=version, id="typed-1"
                    )
                    for t in request["inputs"]:
                        tensor = message.inputs.add(
                            name=t["name"], datatype=t["datatype"], shape=t["shape"]
                        )
                        values = t["data"]
                        if t["datatype"] == "BYTES":
                            values = [v.encode() for v in values]
                        getattr(tensor.contents, CONTENTS_FIELD[t["datatype"]]).extend(values)
                    response = self.stub.ModelInfer(message)
                    self.assertEqual(response.model_version, version)
                    self.assertEqual(response.id, "typed-1")
                    self.assertEqual(len(response.raw_output_contents), len(response.outputs))
                    result = grpcclient.InferResult(response)
                    for want in expected["outputs"]:
                        assert_output(self, result.as_numpy(want["name"]), want, context)

    def test_health_service(self):
        check = self.channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda m: m,
            response_deserializer=lambda m: m,
        )
        # HealthCheckRequest{service: ""} is the empty message; SERVING is status 1.
        self.assertEqual(check(b""), b"\x08\x01")
        service = b"inference.GRPCInferenceService"
        self.assertEqual(check(b"\x0a" + bytes([len(service)]) + service), b"\x08\x01")

    def test_repository_index_load_unload(self):
        index = self.client.get_model_repository_index(as_json=True)["models"]
        ready = {(m["name"], m.get("version", "")) for m in index if m.get("state") == "READY"}
        for model, version, _ in cases():
            self.assertIn((model, version), ready, index)
        for entry in index:
            self.assertIn(entry.get("state"), ("READY", "UNAVAILABLE"), entry)
            if entry.get("state") == "UNAVAILABLE":
                self.assertTrue(entry.get("reason"), entry)

        model, version, stem = cases()[-1]
        self.client.unload_model(model)
        try:
            self.assertFalse(self.client.is_model_ready(model))
            index = self.client.get_model_repository_index(as_json=True)["models"]
            entry = [m for m in index if m["name"] == model]
            self.assertEqual(len(entry), 1, entry)
            self.assertEqual(entry[0]["state"], "UNAVAILABLE")
            self.assertTrue(entry[0]["reason"])
            with self.assertRaises(InferenceServerException) as caught:
                self.client.unload_model(model)
            self.assertIn(f"unknown model '{model}'", caught.exception.message())
        finally:
            self.client.load_model(model)
        self.assertTrue(self.client.is_model_ready(model, version))

        with self.assertRaises(InferenceServerException) as caught:
            self.client.load_model("no_such_model")
        self.assertIn("no_such_model", caught.exception.message())
        self.assertIn("NOT_FOUND", caught.exception.status())


def main():
    global ARGS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http-url", required=True, help="host:port of the HTTP listener")
    parser.add_argument("--grpc-url", required=True, help="host:port of the gRPC listener")
    parser.add_argument("--suite", choices=sorted(SUITES), required=True)
    parser.add_argument(
        "--fixtures",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "fixtures",
        help="the tests/fixtures folder",
    )
    parser.add_argument("--skip-model", action="append", default=[], help="model to leave out")
    ARGS, rest = parser.parse_known_args()
    if not cases():
        parser.error("every model of the suite was skipped")
    program = unittest.main(argv=[sys.argv[0], *rest], exit=False, verbosity=2)
    sys.exit(0 if program.result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
