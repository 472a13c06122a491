#!/usr/bin/env bash
# Make the ONNX Runtime shared library available to the `ort` crate (load-dynamic feature)
# without any network access other than PyPI: the library is taken from onnxruntime's wheel.
#
#   scripts/fetch-ort.sh            -> <root>/.ort/libonnxruntime.so
#   export ORT_DYLIB_PATH=...       (the last line it prints)
#
# Override the version with ORT_VERSION=1.x.y (must have a manylinux wheel for this Python).
set -euo pipefail

ORT_VERSION="${ORT_VERSION:-1.32.0}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/.ort"
LINK="$DEST/libonnxruntime.so"

if [[ -e "$LINK" ]]; then
    echo "ORT_DYLIB_PATH=$LINK"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "fetch-ort: downloading onnxruntime==$ORT_VERSION wheel from PyPI" >&2
"$PYTHON" -m pip download --quiet --disable-pip-version-check \
    "onnxruntime==$ORT_VERSION" --no-deps --only-binary=:all: -d "$TMP" >&2

shopt -s nullglob
wheels=("$TMP"/onnxruntime-*.whl)
if (( ${#wheels[@]} != 1 )); then
    echo "fetch-ort: expected one onnxruntime wheel in $TMP, found ${#wheels[@]}" >&2
    exit 1
fi

# A wheel is a zip; use Python's zipfile so `unzip` need not be installed.
mkdir -p "$DEST"
lib="$("$PYTHON" - "${wheels[0]}" "$DEST" <<'PY'
import os, shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist()
             if n.startswith("onnxruntime/capi/libonnxruntime.so.") and not n.endswith("/")]
    if len(names) != 1:
        sys.exit(f"fetch-ort: expected one onnxruntime/capi/libonnxruntime.so.* in the wheel, got {names}")
    name = os.path.basename(names[0])
    tmp = os.path.join(dest, name + ".part")
    with z.open(names[0]) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.chmod(tmp, 0o755)
    os.replace(tmp, os.path.join(dest, name))
    print(name)
PY
)"

ln -sfn "$lib" "$LINK"   # relative link, so the folder can be moved or copied
echo "fetch-ort: installed $DEST/$lib" >&2
echo "ORT_DYLIB_PATH=$LINK"
