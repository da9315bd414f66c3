#!/usr/bin/env bash
# The package as a user gets it: build the wheel and the sdist from the tree (tracked and new files,
# nothing ignored), check the wheel holds only medrae/ and its dist-info, install each into a fresh
# virtual environment with no source tree on the path, and run there `medrae demo` and a
# protect -> restore -> verify of 5 images.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src" "$work/dist" "$work/run"
(cd "$root" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$work/src"

python -m pip install -q build
python -m build -q --wheel --sdist --outdir "$work/dist" "$work/src" > "$work/build.log" 2>&1 || { tail -30 "$work/build.log"; exit 1; }
wheel=$(ls "$work/dist"/medrae-*.whl)
sdist=$(ls "$work/dist"/medrae-*.tar.gz)
echo "built $(basename "$wheel") ($(du -m "$wheel" | cut -f1) MB) and $(basename "$sdist")"

python - "$wheel" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
tops = sorted({n.split("/")[0] for n in names})
extra = [t for t in tops if t != "medrae" and not t.endswith(".dist-info")]
assert not extra, f"the wheel installs more than medrae/: {extra}"
for needed in ("medrae/models/segmenter.onnx", "medrae/models/gradient_resnet18.onnx", "medrae/kernels/patterns/cxr3_v1.npy"):
    assert needed in names, f"the wheel lacks {needed}"
print("wheel holds:", " ".join(tops), f"({sum(n.endswith('.onnx') for n in names)} ONNX models)")
PY

roundtrip() {  # $1: a fresh venv with medrae installed
    local venv="$1" run="$work/run/$(basename "$1")"
    mkdir -p "$run" && cd "$run"
    "$venv/bin/python" -c "import medrae, sys; assert 'site-packages' in medrae.__file__, medrae.__file__; print('medrae', medrae.__version__, 'from', medrae.__file__)"
    if "$venv/bin/python" -c "import kernels" 2>/dev/null; then echo "a top-level 'kernels' module is importable"; exit 1; fi
    "$venv/bin/medrae" --version
    "$venv/bin/medrae" demo | tail -2
    "$venv/bin/python" - <<'PY'
from pathlib import Path
from PIL import Image
from medrae.toolkit.phantoms import chest_phantom
Path("in").mkdir()
for i in range(5):
    Image.fromarray(chest_phantom(i)[0]).save(f"in/p{i}.png")
PY
    "$venv/bin/medrae" keygen k.key > /dev/null
    "$venv/bin/medrae" protect in out --key k.key > protect.log 2>&1 || { cat protect.log; exit 1; }
    "$venv/bin/medrae" restore out back --key k.key > restore.log 2>&1 || { cat restore.log; exit 1; }
    "$venv/bin/medrae" verify in out --key k.key > verify.log 2>&1 || { cat verify.log; exit 1; }
    "$venv/bin/python" - <<'PY'
import numpy as np
from pathlib import Path
from PIL import Image
files = sorted(Path("in").glob("*.png"))
assert len(files) == 5 and all(np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(Path("back") / f.name))) for f in files)
assert all(not np.array_equal(np.asarray(Image.open(f)), np.asarray(Image.open(Path("out") / f.name))) for f in files)
print("5 images: protected, restored bit for bit, verified")
PY
    cd "$work"
}

for artefact in "$wheel" "$sdist"; do
    venv="$work/venv-$(basename "$artefact" | sed 's/.*\.\(whl\|tar\.gz\)$/\1/; s/\.//g')"
    python -m venv "$venv"
    "$venv/bin/pip" install -q "$artefact" "onnxruntime>=1.17" 2>&1 | grep -v -i "warning" || true
    echo "== installed $(basename "$artefact") into a fresh virtual environment"
    roundtrip "$venv"
done
echo "package check passed"
