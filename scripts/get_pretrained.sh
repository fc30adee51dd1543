#!/usr/bin/env bash
# Install the pretrained YOLOX-tiny start: weights/yolox_tiny_camera_traps.pth (then `model=yolox_tiny
# model.weights=weights/yolox_tiny_camera_traps.pth`, or experiment=pretrained_cpu).
#
# The weights are YOLOX-tiny trained by DrivenData on camera-trap images to reproduce MegaDetector's boxes
# (one class, "animal", 640 px), shipped inside the zamba 2.7.2 wheel (MIT licence, DrivenData 2022). No
# registry package ships COCO-trained YOLOX weights; this is the one pretrained YOLOX a package index offers.
# Setup-time only: the wheel comes from the package index with `pip download --no-deps`; nothing at run time
# downloads. Idempotent: does nothing when the file is already there with the published sha256.
#
# The file is copied byte for byte: it is a plain dict of tensors ({"model", "optimizer", "start_epoch"}),
# which `raylib.model.read_weights` loads with torch.load(weights_only=True), so it needs no conversion.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEEL_SPEC="zamba==2.7.2"
MEMBER="zamba/object_detection/yolox/assets/yolox_tiny_640_20220528.pth"
SHA256="31f8690fc62f9d0756f1e8c09b0b02e5ade106173ed0a30743d47c004f88f4e0"
TARGET=${1:-weights/yolox_tiny_camera_traps.pth}
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$TARGET" ] && [ "$(sha_of "$TARGET")" = "$SHA256" ]; then
  echo "get_pretrained: $TARGET already installed (sha256 ok)"
  exit 0
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
echo "get_pretrained: downloading the $WHEEL_SPEC wheel (41 MB) from the package index ..."
"$PYTHON" -m pip download -q --no-deps --disable-pip-version-check "$WHEEL_SPEC" -d "$scratch/wheel" \
  || { echo "get_pretrained: 'pip download $WHEEL_SPEC' failed: check the package index is reachable" >&2; exit 1; }
wheel=$(ls "$scratch"/wheel/zamba-2.7.2-*.whl)
# A wheel is a zip: Python's zipfile needs no unzip binary.
"$PYTHON" - "$wheel" "$MEMBER" "$scratch/weights.pth" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(out, "wb") as target:
    shutil.copyfileobj(source, target)
EOF
got=$(sha_of "$scratch/weights.pth")
if [ "$got" != "$SHA256" ]; then
  echo "get_pretrained: $MEMBER in $(basename "$wheel") has sha256 $got, expected $SHA256: refusing to install it" >&2
  exit 1
fi
mkdir -p "$(dirname "$TARGET")"
mv "$scratch/weights.pth" "$TARGET.partial"
mv "$TARGET.partial" "$TARGET"  # a rename: an interrupted run never leaves a half file at $TARGET
echo "get_pretrained: installed $TARGET (sha256 $SHA256)"
echo "  use: model=yolox_tiny model.weights=$TARGET  (or experiment=pretrained_cpu)"
