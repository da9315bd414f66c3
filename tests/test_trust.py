"""What restore trusts and how a command ends: keyless files with a key, hostile key paths, report
paths, a damaged key check value, and a batch whose main process is killed or asked to stop."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medrae import kernels
from medrae.cli import app
from medrae.toolkit.imageio import read_image
from medrae.toolkit.phantoms import chest_phantom

runner = CliRunner()
CLI = [sys.executable, "-c", "from medrae.cli import app; app()"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def phantoms(folder: Path, n: int) -> Path:
    """``n`` chest phantoms as PNGs in ``folder``."""
    folder.mkdir()
    for i in range(n):
        Image.fromarray(chest_phantom(i)[0]).save(folder / f"p{i:02d}.png")
    return folder


@pytest.fixture
def tree(tmp_path) -> Path:
    return phantoms(tmp_path / "in", 2)


@pytest.fixture
def keyfile(tmp_path) -> Path:
    k = tmp_path / "site.key"
    assert invoke("keygen", k).exit_code == 0
    return k


def test_a_keyless_file_is_refused_with_a_key_unless_allowed(tmp_path, tree, keyfile):
    r = invoke("protect", tree, tmp_path / "nk", "--no-encrypt")
    assert r.exit_code == 0, r.output
    r = invoke("restore", tmp_path / "nk", tmp_path / "r1", "--key", keyfile)
    assert r.exit_code == 1 and "not authenticated" in r.output and "anyone with medrae could have made it" in r.output
    assert not (tmp_path / "r1").exists() or not list((tmp_path / "r1").rglob("*.png"))
    r = invoke("verify", tree, tmp_path / "nk", "--key", keyfile)
    assert r.exit_code == 1 and "identical" not in r.output.split("failed")[-1]
    r = invoke("restore", tmp_path / "nk", tmp_path / "r2", "--key", keyfile, "--allow-keyless")
    assert r.exit_code == 0, r.output
    assert all(np.array_equal(read_image(f).pixels, read_image(tmp_path / "r2" / f.name).pixels) for f in tree.glob("*.png"))
    assert invoke("verify", tree, tmp_path / "nk", "--key", keyfile, "--allow-keyless").exit_code == 0
    r = invoke("info", tmp_path / "nk" / "p00.png")
    assert r.exit_code == 0 and "keyless: anyone with medrae could have made it" in r.output


def test_hostile_key_paths_are_one_line_and_read_nothing(tmp_path, tree):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    big = tmp_path / "big.key"
    big.write_bytes(os.urandom(5000))
    cases = {fifo: "a FIFO", Path("/dev/zero"): "a device", tmp_path: "a directory", big: "5,000 bytes"}
    for path, why in cases.items():
        t = time.monotonic()
        r = subprocess.run([*CLI, "restore", str(tree), str(tmp_path / "out"), "--key", str(path)], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and time.monotonic() - t < 30


def test_report_paths(tmp_path, tree, keyfile):
    r = invoke("protect", tree, tmp_path / "out", "--key", keyfile, "--report", tmp_path)
    assert r.exit_code == 2 and "is a directory; --report takes a file path" in r.output
    assert not (tmp_path / "out").exists()  # checked before any work
    r = invoke("restore", tmp_path / "nowhere", tmp_path / "back", "--key", keyfile, "--report", tmp_path)
    assert r.exit_code == 2 and "Traceback" not in r.output


def _mount_tmpfs(path: Path, options: str) -> bool:
    import shutil

    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


def test_a_report_on_a_full_disk_leaves_no_partial_file(tmp_path, tree, keyfile):
    full = tmp_path / "full"
    if not _mount_tmpfs(full, "size=64k"):
        pytest.skip("needs root and mount to make a small tmpfs")
    try:
        (full / "filler").write_bytes(b"x" * (64 * 1024 - 512))
        r = invoke("protect", tree, tmp_path / "out", "--key", keyfile, "--report", full / "r.json")
        assert r.exit_code == 1 and "report not written" in r.output and "Traceback" not in r.output, r.output
        assert sorted(p.name for p in full.iterdir()) == ["filler"]  # neither the report nor a temporary
        assert len(list((tmp_path / "out").glob("*.png"))) == 2  # the protected files stand
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)


def test_a_damaged_key_check_value_is_damage_not_a_wrong_key(tmp_path, tree, keyfile):
    """Flip every bit the payload's key check value is hidden in: each is refused, and with the
    right key never reported as a wrong key."""
    from medrae.kernels import container, rdh

    key = bytes.fromhex(keyfile.read_text().strip())
    img = chest_phantom(0)[0]
    adv = img.copy()
    adv[::7, ::7] = np.clip(adv[::7, ::7].astype(int) + 2, 0, 255).astype(np.uint8)
    marked, _ = kernels.protect_array(img, adv, key, eps=8)
    _, payload = rdh.extract(marked)
    kcv_at = container._FIXED.size + container.NONCE_BYTES
    for bit in range(8 * container.KCV_BYTES):
        damaged = bytearray(payload)
        damaged[kcv_at + bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(kernels.PayloadError, match="key check value was altered"):
            container.unseal(bytes(damaged), key)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().split(")")[-1].split()[1]) == pid:
                    kids.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return kids


def _survivors_of_a_kill(proc: subprocess.Popen, pids: list[int], seconds: float) -> list[int]:
    """SIGKILL ``proc``, then the ``pids`` (its processes) still alive after ``seconds``."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    end = time.monotonic() + seconds
    while time.monotonic() < end and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def _protect_in_background(src: Path, out: Path, keyfile: Path, *options: str) -> subprocess.Popen:
    """``medrae protect`` with 2 workers (default: chunks of 2 files) in a process of its own."""
    return subprocess.Popen([*CLI, "protect", str(src), str(out), "--key", str(keyfile), "--workers", "2", *(options or ("--batch-size", "2"))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_outputs(out: Path, n: int, proc: subprocess.Popen, seconds: float = 120) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and proc.poll() is None:
        if len(list(out.glob("*.png"))) >= n:
            return
        time.sleep(0.1)


@pytest.fixture
def many(tmp_path) -> Path:
    return phantoms(tmp_path / "many", 24)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads worker processes from /proc")
def test_no_worker_outlives_a_killed_command(tmp_path, many, keyfile):
    out = tmp_path / "out"
    proc = _protect_in_background(many, out, keyfile)
    _wait_for_outputs(out, 2, proc)
    workers = _children(proc.pid)
    assert proc.poll() is None and len(workers) >= 2, "the command ended before it could be killed"
    assert not _survivors_of_a_kill(proc, workers, seconds=5), "worker processes outlived the killed command"
    written = sorted(out.glob("*.png"))
    n_before = len(written)
    time.sleep(1)  # nothing goes on writing
    assert len(sorted(out.glob("*.png"))) == n_before and not list(out.glob(".*medrae-tmp"))
    assert written and all(invoke("verify", many / f.name, f, "--key", keyfile).exit_code == 0 for f in written)


def test_sigterm_stops_after_the_files_in_flight(tmp_path, many, keyfile):
    out = tmp_path / "out"
    proc = _protect_in_background(many, out, keyfile)
    _wait_for_outputs(out, 2, proc)
    assert proc.poll() is None, "the command ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    assert "stopped by SIGTERM" in stderr and "Traceback" not in stderr
    written = sorted(out.glob("*.png"))
    assert 2 <= len(written) < 24 and not list(out.glob(".*medrae-tmp"))
    assert all(invoke("verify", many / f.name, f, "--key", keyfile).exit_code == 0 for f in written)
    r = invoke("protect", many, out, "--key", keyfile)  # the rerun finishes the rest
    assert r.exit_code == 0 and len(list(out.glob("*.png"))) == 24
    assert invoke("verify", many, out, "--key", keyfile).exit_code == 0


def test_an_edited_dicom_header_is_refused_naming_the_element(tmp_path, keyfile):
    import pydicom

    from test_api import _dicom

    src = tmp_path / "in"
    src.mkdir()
    _dicom(src / "a.dcm", chest_phantom(2)[0].astype(np.uint16) * 16)
    assert invoke("protect", src, tmp_path / "out", "--key", keyfile).exit_code == 0
    edits = {"PatientID": "EVIL", "PhotometricInterpretation": "MONOCHROME1", "Modality": "CT"}
    for name, value in edits.items():
        ds = pydicom.dcmread(tmp_path / "out" / "a.dcm")
        setattr(ds, name, value)
        edited = tmp_path / f"edited_{name}"
        edited.mkdir()
        ds.save_as(edited / "a.dcm")
        r = invoke("restore", edited, tmp_path / f"back_{name}", "--key", keyfile)
        lines = [line for line in r.output.splitlines() if line.startswith("failed")]
        assert r.exit_code == 1 and len(lines) == 1 and f"{name} changed" in lines[0] and "tampered" in lines[0], r.output
        assert not list((tmp_path / f"back_{name}").rglob("*.dcm")) if (tmp_path / f"back_{name}").exists() else True
        r = invoke("verify", src, edited, "--key", keyfile)
        assert r.exit_code == 1 and f"{name} changed" in r.output
    # untouched: restored byte for byte, and verify compares the header too
    assert invoke("restore", tmp_path / "out", tmp_path / "back", "--key", keyfile).exit_code == 0
    assert (tmp_path / "back" / "a.dcm").read_bytes() == (src / "a.dcm").read_bytes()
    ds = pydicom.dcmread(src / "a.dcm")
    ds.PatientID = "CHANGED-AFTER"
    ds.save_as(src / "a.dcm")  # the original edited after protect: verify says so
    r = invoke("verify", src, tmp_path / "out", "--key", keyfile)
    assert r.exit_code == 1 and "of the original differs" in r.output and "PatientID" in r.output


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads processes from /proc")
def test_ray_local_leaves_nothing_running_when_killed(tmp_path, many, keyfile):
    """``--ray local`` starts Ray below the command; killed with SIGKILL, the command takes the
    actors and every Ray process it started with it (Ray's agents used to stay)."""
    pytest.importorskip("ray")
    out = tmp_path / "out"
    proc = _protect_in_background(many, out, keyfile, "--ray", "local")
    _wait_for_outputs(out, 2, proc, seconds=180)
    assert proc.poll() is None, "the command ended before it could be killed"

    def below(root: int) -> list[int]:
        found, todo = [], [root]
        while todo:
            kids = _children(todo.pop())
            found += kids
            todo += kids
        return found

    started = [p for p in below(proc.pid) if _alive(p)]
    assert len(started) >= 3  # Ray's processes and the actors
    assert not _survivors_of_a_kill(proc, started, seconds=10), "processes started by the killed command are still running"
    written = sorted(out.glob("*.png"))
    assert written and all(invoke("verify", many / f.name, f, "--key", keyfile).exit_code == 0 for f in written)
