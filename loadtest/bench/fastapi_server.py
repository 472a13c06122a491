"""A fair Python baseline for sluice: FastAPI + onnxruntime serving the KServe v2 JSON infer
route for every model in a Triton-layout repository (newest version), with orjson for JSON,
uvloop and httptools through uvicorn[standard], no access log and no debug logging.

    uvicorn --app-dir loadtest/bench fastapi_server:app --port 8600 --workers 1 \
        --no-access-log --log-level warning      (REPO=path/to/repo)
"""
import os
import pathlib

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

REPO = pathlib.Path(os.environ.get("REPO", "gateway/tests/fixtures/bench/repo"))
DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}

options = ort.SessionOptions()
options.intra_op_num_threads = 1
sessions = {}
for model_dir in sorted(p for p in REPO.iterdir() if p.is_dir()):
    versions = sorted(int(v.name) for v in model_dir.iterdir() if v.name.isdigit())
    path = model_dir / str(versions[-1]) / "model.onnx"
    sessions[model_dir.name] = ort.InferenceSession(str(path), options)

app = FastAPI()


@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request):
    body = orjson.loads(await request.body())
    session = sessions[model]
    feeds = {
        i["name"]: np.asarray(i["data"], dtype=DTYPES[i["datatype"]]).reshape(i["shape"])
        for i in body["inputs"]
    }
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, feeds)
    outputs = [
        {"name": n, "datatype": NAMES[r.dtype], "shape": list(r.shape), "data": r.ravel().tolist()}
        for n, r in zip(names, results)
    ]
    return Response(
        orjson.dumps({"model_name": model, "model_version": "1", "outputs": outputs}),
        media_type="application/json",
    )
