"""The public Python API (``import medrae``), the README's Python example, the installed layout
(one namespace, the runtime free of models/ and torch) and the CLI's face (--version, help panels)."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image
from typer.testing import CliRunner

import medrae
from medrae.cli import app
from medrae.toolkit.phantoms import chest_phantom

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def phantom(h: int = 224, w: int = 224, deep: bool = False, seed: int = 0) -> np.ndarray:
    """A chest phantom resized to h x w, 8-bit or 16-bit (x 257)."""
    img = Image.fromarray(chest_phantom(seed)[0])
    x = np.asarray(img.resize((w, h), Image.BILINEAR) if (h, w) != (224, 224) else img)
    return x.astype(np.uint16) * 257 if deep else x


@pytest.fixture(scope="module")
def key() -> bytes:
    return medrae.new_key()


def test_protect_restore_verify_an_array_of_any_size(key):
    x = phantom(300, 260)
    result = medrae.protect(x, key)
    assert result.pixels.shape == x.shape and result.pixels.dtype == x.dtype and not np.array_equal(result.pixels, x)
    assert result.report["status"] == "protected" and result.report["shape"] == [300, 260]
    assert 25 < result.psnr < 60 and result.report["roi_max_change"] <= 1 and result.fooled in (True, False)
    assert np.array_equal(medrae.restore(result.pixels, key), x)
    assert medrae.verify(x, result.pixels, key)
    assert not medrae.verify(x ^ np.uint8(1), result.pixels, key)
    info = medrae.inspect(result.pixels)
    assert info["encrypted"] is True and info["payload_bits"] == result.report["payload_bits"]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(h=st.integers(64, 400), w=st.integers(64, 400), deep=st.booleans(), seed=st.integers(0, 5), keyless=st.booleans())
def test_round_trip_is_exact_for_any_size_and_depth(h, w, deep, seed, keyless):
    k = None if keyless else medrae.new_key()
    x = phantom(h, w, deep, seed)
    try:
        result = medrae.protect(x, k, refine_steps=0)  # the generator alone: the round trip is the property here
    except medrae.ProtectError as exc:  # a payload that does not fit is refused, never half-protected
        assert "does not fit" in str(exc) or "payload" in str(exc), str(exc)
        return
    assert result.pixels.dtype == x.dtype and result.pixels.shape == x.shape
    assert np.array_equal(medrae.restore(result.pixels, k), x)


def test_ceiling_keeps_12_bit_data_within_its_bits(key):
    x = (phantom(256, 256).astype(np.uint16) * 16)  # 12-bit data in 16-bit words
    result = medrae.protect(x, key, ceiling=4095)
    assert int(result.pixels.max()) <= 4095
    assert np.array_equal(medrae.restore(result.pixels, key, ceiling=4095), x)


def test_bad_arguments_and_refusals_are_typed(key):
    x = phantom()
    with pytest.raises(TypeError, match="must be uint8 or uint16, got dtype float32"):
        medrae.protect(x.astype(np.float32), key)
    with pytest.raises(ValueError, match=r"must be 2-D \(H, W\), got shape \(224, 224, 3\)"):
        medrae.protect(np.stack([x] * 3, -1), key)
    with pytest.raises(ValueError, match="too small"):
        medrae.protect(x[:20, :20], key)
    with pytest.raises(ValueError, match="key: expected 32 bytes"):
        medrae.protect(x, b"short")
    with pytest.raises(medrae.NotProtectedError):
        medrae.restore(x, key)
    protected = medrae.protect(x, key).pixels
    with pytest.raises(medrae.KeyMismatchError):
        medrae.restore(protected, medrae.new_key())
    with pytest.raises(medrae.ProtectError, match="already protected"):
        medrae.protect(protected, key)
    tampered = protected.copy()
    tampered[112, 112] ^= 1  # a pixel in the middle: the payload no longer authenticates it
    with pytest.raises((medrae.PayloadError, medrae.KeyMismatchError, medrae.NotProtectedError)):
        medrae.restore(tampered, key)
    assert issubclass(medrae.ProtectError, medrae.MedraeError)


def test_missing_models_are_one_typed_error(tmp_path, key):
    with pytest.raises(medrae.ModelsError, match="models directory not found"):
        medrae.protect(phantom(), key, models=tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("segmenter.onnx", "generator.onnx"):
        (bad / name).write_bytes(b"not an onnx file")
    (bad / "generator.json").write_text('{"eps": 8}')
    with pytest.raises(medrae.ModelsError, match="not a loadable ONNX model"):
        medrae.protect(phantom(), key, models=bad)


def test_cli_missing_models_is_one_line(tmp_path):
    Image.fromarray(phantom()).save(tmp_path / "a.png")
    (tmp_path / "k").write_text(medrae.new_key().hex())
    r = runner.invoke(app, ["protect", str(tmp_path / "a.png"), str(tmp_path / "out"), "--key", str(tmp_path / "k"),
                            "--models", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1] == f"error: {tmp_path / 'nowhere'}: models directory not found (--models DIR)"
    assert not (tmp_path / "out").exists()


def _dicom(path: Path, pixels: np.ndarray) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientID, ds.Modality, ds.SOPInstanceUID = "P1", "DX", meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_files_round_trip_and_what_is_identical_after_restore(tmp_path, key):
    """README "What is identical after restore": pixels always; a DICOM's bytes too, a PNG's not."""
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(phantom(256, 240)).save(src / "a.png")
    _dicom(src / "b.dcm", phantom(256, 256).astype(np.uint16) * 16)
    for name in ("a.png", "b.dcm"):
        report = medrae.protect_file(src / name, tmp_path / "p" / name, key)
        assert report["status"] == "protected"
        with pytest.raises(medrae.ProtectError, match="output exists"):
            medrae.protect_file(src / name, tmp_path / "p" / name, key)
        medrae.restore_file(tmp_path / "p" / name, tmp_path / "r" / name, key)
        assert medrae.verify_file(src / name, tmp_path / "p" / name, key)
    assert (tmp_path / "r" / "b.dcm").read_bytes() == (src / "b.dcm").read_bytes()
    assert (tmp_path / "r" / "a.png").read_bytes() != (src / "a.png").read_bytes()
    with pytest.raises(medrae.KeyMismatchError):
        medrae.restore_file(tmp_path / "p" / "a.png", tmp_path / "r2.png", medrae.new_key())
    assert not (tmp_path / "r2.png").exists()


def test_readme_python_example_runs(tmp_path, monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README.md has no ```python example"
    Image.fromarray(phantom(320, 288)).save(tmp_path / "chest.png")
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {})
    assert (tmp_path / "chest_protected.png").is_file()


def test_version_and_help_panels():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"medrae {medrae.__version__}"
    r = runner.invoke(app, ["protect", "--help"], env={"COLUMNS": "120"})
    assert r.exit_code == 0
    for panel in ("Advanced: perturbation", "Advanced: lungs (ROI) and hiding", "Advanced: runtime"):
        assert panel in r.output
    assert "medrae[ray]" in r.output
    everyday = r.output.split("Advanced:")[0]
    for option in ("--key", "--strength", "--workers", "--report", "--ray", "--overwrite"):
        assert option in everyday
    # the strength is the everyday dial; its parts (eps, the pattern's amplitude) are expert options
    assert "--roi-threshold" not in everyday and "--codec" not in everyday and "--eps" not in everyday


RUNTIME = ("toolkit", "kernels")
NOT_ON_THE_RUNTIME_PATH = ("medrae.models", "medrae.evaluation", "medrae.export", "torch", "onnx")


def _forbidden(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in NOT_ON_THE_RUNTIME_PATH)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            # relative: level 1 stays in the folder, level 2 reaches medrae's other subpackages
            names.add(node.module if node.level == 0 else f"medrae.{node.module}" if node.level == 2 else f"medrae.{path.parent.name}.{node.module}")
    return names


def test_runtime_folders_never_import_models_evaluation_or_torch():
    offenders = [f"{p.relative_to(ROOT)} imports {m}" for folder in RUNTIME for p in sorted((ROOT / folder).glob("*.py"))
                 for m in _imports(p) if _forbidden(m)]
    assert not offenders, offenders


def test_protect_and_restore_load_no_torch(tmp_path):
    code = ("import sys, numpy as np, medrae; from medrae.toolkit.phantoms import chest_phantom; k = medrae.new_key(); "
            "x = chest_phantom(0)[0]; p = medrae.protect(x, k).pixels; assert (medrae.restore(p, k) == x).all(); "
            "import medrae.cli; bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx') "
            "or m.startswith(('medrae.models', 'medrae.evaluation', 'medrae.export'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_providers_line_is_printed_once(tmp_path):
    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(phantom(seed=i)).save(tmp_path / "in" / f"p{i}.png")
    (tmp_path / "k").write_text(medrae.new_key().hex())
    for workers in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", "from medrae.cli import app; app()", "protect", str(tmp_path / "in"), str(tmp_path / f"o{workers}"),
                              "--key", str(tmp_path / "k"), "--workers", workers], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        assert (out.stdout + out.stderr).count("onnxruntime providers:") == 1, out.stderr


def _module_graph() -> dict[str, set[str]]:
    """medrae's modules and the medrae modules each imports, at any depth of its code (lazy imports
    included); a submodule's import of its own parent package is not an edge."""
    mods = {f"medrae.{p.parent.name}.{p.stem}".removesuffix(".__init__"): p
            for folder in ("toolkit", "kernels", "evaluation", "models", "export") for p in (ROOT / folder).glob("*.py")}
    mods.update({"medrae": ROOT / "__init__.py", "medrae.api": ROOT / "api.py", "medrae.cli": ROOT / "cli.py"})
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        pkg = m if path.name == "__init__.py" else m.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods] or [target]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[m].update(t for t in targets if t in mods and t != m and not m.startswith(t + "."))
    return graph


def test_no_import_circles():
    graph = _module_graph()
    state: dict[str, int] = {}
    circles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                circles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert graph["medrae.toolkit.batch"] and not circles, circles


def test_docs_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = [(p.name, b) for p in sorted((ROOT / "docs").glob("*.md")) for b in re.findall(r"```python\n(.*?)```", p.read_text(), re.S)]
    assert blocks
    for name, code in blocks:
        exec(compile(code, name, "exec"), {})
