"""The fault campaign: damaged protected files are refused, never restored wrong, never crash;
parsers fed random bytes raise typed errors only; a killed batch resumes to identical outputs;
an unwritable or full output directory and two concurrent commands leave nothing half-written.

Counts over a larger campaign: ``python benchmarks/faults.py`` (README, "Fault campaign").
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medrae import kernels
from medrae.evaluation import faults
from medrae.toolkit.imageio import read_image
from medrae.toolkit.phantoms import chest_phantom

ROOT = Path(__file__).resolve().parents[1]
# 3 formats x 3400 damaged files: the campaign's >= 10 000 cases, every run (about a minute)
CASES_PER_FORMAT = int(os.environ.get("MEDRAE_FAULT_CASES", "3400"))
KEY = bytes(range(32))


def _protect_one(src: Path, dst: Path) -> None:
    from medrae.toolkit.batch import protect_paths

    report = protect_paths(src, dst, KEY, workers=1)
    assert report.count("protected") == 1, [r.reason for r in report.results]


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    """A protected PNG (8-bit), TIFF (16-bit) and DICOM (12-bit) file: (bytes, decoded, ROI, original, suffix)."""
    pydicom = pytest.importorskip("pydicom")
    from PIL import Image as PILImage

    from test_pipeline_cli import _dicom
    from medrae.toolkit.imageio import Image

    base = tmp_path_factory.mktemp("faults")
    img, _ = chest_phantom(7)
    files = {}
    (base / "in").mkdir()
    PILImage.fromarray(img).save(base / "in" / "a.png")
    PILImage.fromarray((img.astype(np.uint16) * 257)).save(base / "in" / "b.tif")
    _dicom(base / "in" / "c.dcm", 500 + 10 * img.astype(np.uint16), "MONOCHROME2", 12, window=(1775.5, 2551))
    for name in ("a.png", "b.tif", "c.dcm"):
        src, dst = base / "in" / name, base / "out" / name
        _protect_one(src, dst)
        marked = read_image(dst)
        region = kernels.frozen_region(marked.pixels)
        original = read_image(src).pixels
        files[name.split(".")[1]] = (dst.read_bytes(), marked, region if region is not None else np.zeros(original.shape, bool),
                                     original, dst.suffix)
    assert pydicom  # used through _dicom
    return files


def _campaign(protected, kind: str, damage: str, seed: int, workdir: Path) -> tuple[str, str, str]:
    data, marked, roi, original, suffix = protected[kind]
    case = faults.damage_file(data, marked, roi, damage, np.random.default_rng(seed))
    outcome, what = faults.restore_outcome(case.data, suffix, KEY, original, workdir)
    return outcome, what, case.detail


@pytest.mark.parametrize("kind", ["png", "tif", "dcm"])
def test_damaged_files_are_refused_never_restored_wrong(protected, kind, tmp_path):
    """Every damage class, thousands of seeds: the outcome is a typed refusal, or (only where the
    damage missed every pixel: DICOM elements, PNG/TIFF bytes the decoder never reads) the exact
    original. Pixel damage in a well-formed file is always refused."""

    @settings(max_examples=CASES_PER_FORMAT, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(damage=st.sampled_from(faults.DAMAGES), seed=st.integers(0, 2**32 - 1))
    def check(damage, seed):
        outcome, what, detail = _campaign(protected, kind, damage, seed, tmp_path)
        assert outcome in ("refused", "intact"), f"{kind} {damage} {detail}: {outcome} {what}"
        if damage.startswith("pixel-"):
            assert outcome == "refused", f"{kind} {damage} {detail}: a tampered pixel restored"

    check()


@settings(max_examples=int(os.environ.get("MEDRAE_HEADER_CASES", "140")), deadline=None, suppress_health_check=list(HealthCheck),
          database=None)
@given(edit=st.sampled_from(faults.HEADER_EDITS), seed=st.integers(0, 2**32 - 1))
def test_every_class_of_dicom_header_edit_is_refused(protected, tmp_path_factory, edit, seed):
    """Patient, geometry, photometric, windowing, private and file-meta elements, and a removed
    element: the edited file is refused (the header record in the payload no longer matches, or,
    for a removed element the image needs, the file no longer reads), never restored into an
    "original" with the edited header."""
    data, _, _, original, suffix = protected["dcm"]
    case = faults.edit_header(data, edit, np.random.default_rng(seed))
    outcome, what = faults.restore_outcome(case.data, suffix, KEY, original, tmp_path_factory.getbasetemp())
    # HeaderChangedError; ImageError where the edit left no readable image (e.g. PhotometricInterpretation removed)
    assert outcome == "refused" and what in ("HeaderChangedError", "ImageError"), f"{edit} {case.detail}: {outcome} {what}"
    assert what == "HeaderChangedError" or edit == "header-removed", f"{edit} {case.detail}: {what}"


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(pick=st.integers(0, 10**6), value=st.text(alphabet="ABCDEFGHIJ0123456789.^ ", min_size=1, max_size=12), remove=st.booleans())
def test_random_dicom_header_edits_are_refused_or_change_nothing(protected, tmp_path_factory, pick, value, remove):
    """Any one element of the protected DICOM's header (pixel data aside) set to a random string or
    removed: restore refuses it, naming a changed element, unless the edit left the element's bytes
    as they were."""
    import io

    import pydicom

    from medrae.toolkit.filework import restore_image
    from medrae.toolkit.headers import HeaderChangedError
    from medrae.toolkit.imageio import ImageError, decode_bytes

    data, marked, _, original, _ = protected["dcm"]
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    elems = [e for e in ds if int(e.tag) != 0x7FE00010 and e.VR in ("LO", "SH", "CS", "DS", "IS", "PN", "UI", "DA", "TM", "LT", "ST")]
    elem = elems[pick % len(elems)]
    before = elem.value
    if remove:
        del ds[elem.tag]
    else:
        try:
            elem.value = value
        except (ValueError, TypeError):
            return
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=False)
        image = decode_bytes(buf.getvalue(), marked, "edited.dcm")
    except ImageError:  # e.g. a geometry element no longer matching the pixel data: refused before restore
        return
    except Exception:  # noqa: BLE001 - pydicom refused to write the value: not a file anyone could pass on
        return
    if not remove and str(before) == str(value):
        np.testing.assert_array_equal(restore_image(image, KEY)[0], original)
        return
    with pytest.raises(HeaderChangedError, match="DICOM header changed since protect"):
        restore_image(image, KEY)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(min_size=0, max_size=400), key=st.sampled_from([None, KEY]))
def test_container_parser_fuzz(data, key):
    """Random bytes as a payload: typed errors only (a valid header with a random body is too)."""
    from medrae.kernels import container

    for payload in (data, container.MAGIC + data):
        try:
            container.unseal(payload, key)
        except (kernels.NotProtectedError, kernels.KeyMismatchError, kernels.PayloadError):
            pass
        else:  # only a genuine keyless payload opens; random bytes never do
            pytest.fail("random bytes opened as a payload")


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), signed=st.booleans())
def test_side_information_parser_fuzz(seed, signed):
    """Random border LSBs (with and without a valid signature byte): extraction raises typed errors only."""
    from medrae.kernels.rdh import SIGNATURE, border_length, reserved_indices

    rng = np.random.default_rng(seed)
    image = chest_phantom(seed % 5)[0].copy()
    run = reserved_indices(image.shape, border_length(image.shape))
    image.ravel()[run] = (image.ravel()[run] & 0xFE) | rng.integers(0, 2, run.size, dtype=np.uint8)
    if signed:
        bits = np.unpackbits(np.array([SIGNATURE], np.uint8))
        image.ravel()[run[:8]] = (image.ravel()[run[:8]] & 0xFE) | bits
    try:
        kernels.restore_array(image, KEY)
    except (kernels.NotProtectedError, kernels.KeyMismatchError, kernels.PayloadError):
        return
    pytest.fail("random side information restored")


# ----------------------------------------------------------------------------------------------
# processes killed, directories unwritable, two commands at once
# ----------------------------------------------------------------------------------------------


def _tree(tmp_path: Path, n: int = 6) -> Path:
    from PIL import Image as PILImage

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for s in range(n):
        PILImage.fromarray(chest_phantom(s)[0]).save(src / ("sub" if s % 2 else "") / f"p{s}.png")
    return src


def _cli(*args: str, **kw) -> subprocess.Popen:
    code = "import sys; from medrae.cli import app; sys.argv = ['medrae', *sys.argv[1:]]; app()"
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def _restored(out: Path, key: Path, tmp: Path) -> dict[str, bytes]:
    back = tmp / f"back{time.monotonic_ns()}"
    p = _cli("restore", str(out), str(back), "--key", str(key))
    assert p.wait(120) == 0, p.stdout.read().decode()
    return {str(f.relative_to(back)): f.read_bytes() for f in sorted(back.rglob("*.png"))}


def _final_files(out: Path) -> list[Path]:
    return sorted(f for f in out.rglob("*") if f.is_file() and not f.name.endswith(".medrae-tmp"))


def test_killed_batch_resumes_to_identical_outputs(tmp_path):
    """SIGKILL a protect batch at random points, rerun it each time: every final file is a complete,
    restorable one (never partial), the rerun writes only what is missing, and the outputs restore to
    exactly what an uninterrupted run's do. (The nonce is random, so protected bytes differ run to run;
    the originals they restore to, and every file's validity, do not.)"""
    src = _tree(tmp_path, 10)
    key = tmp_path / "k"
    assert _cli("keygen", str(key)).wait(60) == 0
    ref = tmp_path / "ref"
    assert _cli("protect", str(src), str(ref), "--key", str(key), "--workers", "1", "--batch-size", "1").wait(300) == 0
    out = tmp_path / "out"
    rng = np.random.default_rng(0)
    kills = 0
    for delay in rng.uniform(0.0, 0.6, 3):
        done = len(_final_files(out)) if out.exists() else 0
        p = _cli("protect", str(src), str(out), "--key", str(key), "--workers", "1", "--batch-size", "1")
        # the kill lands mid-batch: once this run has written a file, after a random delay
        while p.poll() is None and (len(_final_files(out)) if out.exists() else 0) <= done:
            time.sleep(0.02)
        time.sleep(delay)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(60)
        for f in _final_files(out):  # whatever has its final name is complete and restores
            r = _cli("verify", str(src / f.relative_to(out)), str(f), "--key", str(key))
            assert r.wait(120) == 0, r.stdout.read().decode()
    before = {f: f.stat().st_mtime_ns for f in _final_files(out)}
    p = _cli("protect", str(src), str(out), "--key", str(key), "--workers", "1")
    assert p.wait(300) == 0, p.stdout.read().decode()
    assert all(f.stat().st_mtime_ns == t for f, t in before.items()), "a finished output was written twice"
    assert [f.relative_to(out) for f in _final_files(out)] == [f.relative_to(ref) for f in _final_files(ref)]
    assert _restored(out, key, tmp_path) == _restored(ref, key, tmp_path)
    assert not list(out.rglob("*.medrae-tmp")), "a killed run's temporary file was left behind after the rerun"
    assert kills >= 1, "no run was killed mid-batch; lengthen the batch"


def test_a_worker_that_dies_fails_its_file_and_the_batch_goes_on(tmp_path):
    """A file whose worker process dies (SIGKILL here: what the OOM killer or a native crash does)
    breaks the pool; the batch protects the files that were in flight again, one at a time, fails
    only that file, with its reason, and writes every other one (each restores). Run in a fresh
    process, so the pool forks with the file's killer in place."""
    src = _tree(tmp_path, 6)
    out = tmp_path / "out"
    code = (
        "import json, os, signal, sys; from pathlib import Path; from medrae.toolkit import batch\n"
        "real = batch.protect_chunk\n"
        "def deadly(protector, chunk, *a, **kw):\n"
        "    if any(Path(s).name == 'p3.png' for s, _ in chunk):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(protector, chunk, *a, **kw)\n"
        "batch.protect_chunk = deadly\n"
        "rep = batch.protect_paths(Path(sys.argv[1]), Path(sys.argv[2]), None, workers=2, batch_size=2, refine_steps=0)\n"
        "print(json.dumps(rep.to_json()))\n")
    run = subprocess.run([sys.executable, "-c", code, str(src), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    files = {Path(f["input"]).name: f for f in json.loads(run.stdout.strip().splitlines()[-1])["files"]}
    assert sorted(files) == [f"p{s}.png" for s in range(6)]
    assert files["p3.png"]["status"] == "failed" and "worker process died" in files["p3.png"]["reason"]
    assert all(f["status"] in ("protected", "skipped") for name, f in files.items() if name != "p3.png"), files
    written = _final_files(out)
    assert sorted(f.name for f in written) == [f"p{s}.png" for s in range(6) if s != 3]
    for f in written:  # every final file is complete and restores to its original (keyless)
        original = read_image(src / f.relative_to(out)).pixels
        assert np.array_equal(kernels.restore_array(read_image(f).pixels, None, 255), original)


def _mount_tmpfs(path: Path, options: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


def _run_protect(src: Path, out: Path, key: bytes):
    from medrae.toolkit.batch import protect_paths

    return protect_paths(src, out, key, workers=1)


def _fake_pool(outcomes: list):
    """``submit_chunk`` for :func:`toolkit.batch._run_chunks` without processes: each call takes the
    next outcome: rows (a finished chunk), a BrokenProcessPool (its worker died), or "refused"
    (the pool broke before the submission: ``submit`` raises)."""
    from concurrent.futures import Future
    from concurrent.futures.process import BrokenProcessPool

    def submit_chunk(chunk):
        outcome = outcomes.pop(0)
        if outcome == "refused":
            raise BrokenProcessPool("pool broken")
        f = Future()
        f.set_exception(outcome) if isinstance(outcome, BaseException) else f.set_result([(chunk, outcome)])
        return f

    return submit_chunk


@pytest.mark.parametrize("order", ["finished first", "broken first"])
def test_no_chunk_is_lost_when_the_pool_breaks_between_chunks(order):
    """A worker dies while another chunk finishes: the dead chunk's files become suspects and the
    chunk not yet started stays queued, whatever order the two come back in; and a chunk the broken
    pool refuses at submission stays queued too (the files were once dropped there, unreported)."""
    from concurrent.futures.process import BrokenProcessPool

    from medrae.toolkit.batch import _run_chunks

    chunks = [[("a1", "A1"), ("a2", "A2")], [("b1", "B1")], [("c1", "C1")]]
    died = BrokenProcessPool("worker died")
    outcomes = ["ok", died] if order == "finished first" else [died, "ok"]
    queue, suspects, seen = chunks[::-1], [], []
    with pytest.raises(BrokenProcessPool):
        _run_chunks(queue, 2, _fake_pool(outcomes + ["refused"]), seen.append, suspects)
    ok, dead = (chunks[0], chunks[1]) if order == "finished first" else (chunks[1], chunks[0])
    assert seen == [(ok, "ok")] and suspects == dead[::-1] and queue == [chunks[2]]
    # one worker: its chunk finishes, then the pool refuses the next one
    queue, suspects, seen = chunks[::-1], [], []
    with pytest.raises(BrokenProcessPool):
        _run_chunks(queue, 1, _fake_pool(["ok", "refused"]), seen.append, suspects)
    assert seen == [(chunks[0], "ok")] and suspects == [] and queue == chunks[1:][::-1]


def test_read_only_output_directory(tmp_path):
    """Nothing can be written: each file fails with a one-line reason naming it; nothing appears."""
    src = _tree(tmp_path, 2)
    out = tmp_path / "ro"
    if os.geteuid() == 0:
        if not _mount_tmpfs(out, "ro,size=1m"):
            pytest.skip("running as root (permissions are not enforced) and cannot mount a read-only tmpfs")
    else:
        out.mkdir()
        out.chmod(0o555)
    try:
        report = _run_protect(src, out, KEY)
        assert report.count("failed") == 2 and report.count("protected") == 0
        for r in report.failed:
            assert "cannot write" in r.reason and "\n" not in r.reason, r.reason
        assert not [f for f in out.rglob("*") if f.is_file()]
    finally:
        if os.geteuid() == 0:
            _umount(out)
        else:
            out.chmod(0o755)


def test_full_output_directory(tmp_path):
    """A disk that fills mid-batch: the files that fit are complete and restore; the others fail with
    'No space left', and no partial file or temporary is left under the output tree."""
    src = _tree(tmp_path, 6)
    out = tmp_path / "full"
    if not _mount_tmpfs(out, "size=120k"):
        pytest.skip("needs root to mount a small tmpfs (a full disk cannot be simulated otherwise)")
    try:
        report = _run_protect(src, out, KEY)
        failed, done = report.failed, [r for r in report.results if r.status == "protected"]
        assert failed, "the tmpfs did not fill; make it smaller"
        assert all("No space left" in r.reason for r in failed), [r.reason for r in failed]
        assert sorted(Path(r.output) for r in done) == _final_files(out)
        for r in done:
            marked = read_image(r.output)
            assert np.array_equal(kernels.restore_array(marked.pixels, KEY), read_image(r.input).pixels)
        assert not list(out.rglob("*.medrae-tmp"))
    finally:
        _umount(out)


def test_two_commands_on_one_output_tree(tmp_path):
    """Two protect commands at once on the same tree: every output is written once, by one of them,
    complete and restorable; the other reports it skipped; no temporary is left."""
    src = _tree(tmp_path, 6)
    key = tmp_path / "k"
    assert _cli("keygen", str(key)).wait(60) == 0
    out = tmp_path / "out"
    reps = [tmp_path / f"r{i}.json" for i in range(2)]
    procs = [_cli("protect", str(src), str(out), "--key", str(key), "--workers", "1", "--report", str(r)) for r in reps]
    for p in procs:
        assert p.wait(300) == 0, p.stdout.read().decode()
    results = [json.loads(r.read_text())["files"] for r in reps]
    protected = [f["output"] for files in results for f in files if f["status"] == "protected"]
    assert sorted(protected) == sorted(set(protected)) and len(protected) == 6, "an output was written by both"
    assert all(f["status"] in ("protected", "skipped") for files in results for f in files)
    p = _cli("verify", str(src), str(out), "--key", str(key))
    assert p.wait(120) == 0, p.stdout.read().decode()
    assert not list(out.rglob("*.medrae-tmp"))
