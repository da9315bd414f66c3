"""Protect, restore and verify on a real local Ray cluster (two nodes on this machine; no mocks).

Skipped when the ``ray`` extra is not installed. The cluster is started once for the module.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")

from medrae.toolkit.batch import protect_paths, restore_paths, verify_paths  # noqa: E402
from medrae.toolkit.demo import write_phantoms  # noqa: E402
from medrae.toolkit.settings import ProtectSettings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = bytes(range(32))
FAST = ProtectSettings(refine_steps=0, batch_size=2)  # the generator alone: the cluster path, not the attack, is tested


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, one CPU each: two actors land on two nodes."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=1)
    ray.init(address=c.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    c.wait_for_nodes()
    yield c.address
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster") / "orig"
    write_phantoms(root)  # six 224x224 8-bit and one 640x560 16-bit phantom
    (root / "sub").mkdir()
    for k in range(2):  # a subfolder: the output mirrors the tree
        (root / "sub" / f"copy{k}.png").write_bytes((root / f"phantom{k}.png").read_bytes())
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _worker_pids() -> list[int]:
    """Processes of the medrae actors (Ray titles them ray::MedraeWorker...)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"MedraeWorker" in (d / "cmdline").read_bytes():
                    pids.append(int(d.name))
            except OSError:
                continue
    return pids


def test_cluster_files_equal_single_machine(cluster, phantoms, tmp_path):
    """--no-encrypt files protected on two nodes are byte-identical to the single-machine ones
    (the default settings: segmentation, QC, refinement, coding, hiding); with a key, the restored
    originals are the inputs and verify on the cluster agrees."""
    settings = ProtectSettings(batch_size=3)
    one = protect_paths(phantoms, tmp_path / "one", None, settings, workers=1)
    two = protect_paths(phantoms, tmp_path / "two", None, settings, workers=2, ray=cluster)
    assert one.count("protected") == two.count("protected") == 9
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    assert two.cluster["actors"] == 2 and len(two.cluster["nodes"]) == 2
    per_node = two.totals()["per_node"]
    assert sum(d["files"] for d in per_node.values()) == 9
    assert {r.node for r in two.results} == set(two.cluster["nodes"])
    assert two.mode == one.mode and two.models == one.models and two.eps == one.eps

    enc = protect_paths(phantoms, tmp_path / "enc", KEY, FAST, workers=2, ray=cluster)
    assert enc.count("protected") == 9
    back = restore_paths(tmp_path / "enc", tmp_path / "back", KEY, workers=2, ray=cluster)
    assert back.count("restored") == 9
    orig = _files(phantoms)
    from medrae.toolkit.imageio import read_image

    for name in orig:
        assert np.array_equal(read_image(tmp_path / "back" / name).pixels, read_image(phantoms / name).pixels)
    ver = verify_paths(phantoms, tmp_path / "enc", KEY, workers=2, ray=cluster)
    assert ver.count("identical") == 9 and not ver.failed


def test_cluster_bad_file_fails_once_and_batch_goes_on(cluster, phantoms, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(phantoms.glob("phantom[0-2].png")):
        (src / p.name).write_bytes(p.read_bytes())
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    rep = protect_paths(src, tmp_path / "out", KEY, FAST, workers=2, ray=cluster)
    failed = [r for r in rep.results if r.status == "failed"]
    assert [Path(r.input).name for r in failed] == ["broken.png"] and failed[0].reason and "\n" not in failed[0].reason
    assert rep.count("protected") == 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["phantom0.png", "phantom1.png", "phantom2.png"]


def test_cluster_worker_killed_mid_batch_is_retried(cluster, phantoms, tmp_path):
    """SIGKILL one actor's process after the first file is done: Ray restarts it and retries its
    chunk; every file ends protected (or skipped: written before the kill) and restores."""
    killed = []

    def kill_one(_result) -> None:
        if not killed:
            pids = _worker_pids()
            assert pids, "no MedraeWorker process found"
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    settings = ProtectSettings(refine_steps=0, batch_size=1)
    rep = protect_paths(phantoms, tmp_path / "out", KEY, settings, workers=2, ray=cluster, on_result=kill_one)
    assert killed
    assert not rep.failed, [r.reason for r in rep.failed]
    assert rep.count("protected") + rep.count("skipped") == 9
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")], "a temporary was left under the output"
    ver = verify_paths(phantoms, tmp_path / "out", KEY, workers=1)
    assert ver.count("identical") == 9


def test_cluster_driver_killed_then_rerun_resumes(cluster, phantoms, tmp_path):
    """A protect command on the cluster is SIGKILLed after its first output; the rerun writes only
    what is missing (the rest skipped) and the tree equals an uninterrupted run's."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-c", "from medrae.cli import app; app()", "protect", str(phantoms), str(out), "--no-encrypt",
           "--refine-steps", "0", "--batch-size", "1", "--workers", "2", "--ray", cluster]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline and not any(p.suffix == ".png" and not p.name.startswith(".") for p in out.rglob("*")):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = {p for p in out.rglob("*.png") if not p.name.startswith(".")}
    assert first, "the command wrote nothing before it was killed"
    rep = protect_paths(phantoms, out, None, FAST, workers=2, ray=cluster)
    assert not rep.failed
    assert rep.count("skipped") >= len(first) and rep.count("protected") + rep.count("skipped") == 9
    whole = protect_paths(phantoms, tmp_path / "whole", None, FAST, workers=1)
    assert whole.count("protected") == 9
    assert {k: v for k, v in _files(out).items() if not Path(k).name.startswith(".")} == _files(tmp_path / "whole")


def test_cluster_unreachable_address_is_one_line_error(tmp_path, phantoms):
    """A fresh process (this one is connected to the module's cluster): exit 2, one line, nothing written."""
    res = subprocess.run([sys.executable, "-c", "from medrae.cli import app; app()", "restore", str(phantoms), str(tmp_path / "o"),
                          "--ray", "127.0.0.1:1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--ray 127.0.0.1:1" in lines[0], res.stderr
    assert not (tmp_path / "o").exists()


def test_cluster_started_by_ray_start_joined_by_address(tmp_path, phantoms):
    """A cluster as an administrator starts one (``ray start --head``; where it turns token
    authentication on, it writes ``~/.ray/auth_token``), joined by HOST:PORT from a fresh process:
    with a token, without ``RAY_AUTH_MODE=token`` a one-line error that says what to set (exit 2,
    nothing written); with it, or where ``ray start`` made no token, the single-machine files."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    plain = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
                             "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=plain)
    try:
        src = tmp_path / "in"
        src.mkdir()
        for k in range(2):
            (src / f"p{k}.png").write_bytes((phantoms / f"phantom{k}.png").read_bytes())
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        cmd = [sys.executable, "-c", "from medrae.cli import app; app()", "protect", str(src), str(tmp_path / "out"),
               "--no-encrypt", "--refine-steps", "0", "--ray", f"127.0.0.1:{port}"]
        token = Path.home() / ".ray" / "auth_token"
        if token.exists():  # `ray start` made one: the cluster wants it
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=plain)
            lines = [line for line in res.stderr.splitlines() if line.strip() and not line.startswith("warning: --no-encrypt")]
            assert res.returncode == 2 and len(lines) == 1 and "RAY_AUTH_MODE=token" in lines[0], res.stderr[-2000:]
            assert not (tmp_path / "out").exists()
        # with a token the client must ask for token auth; without one (`ray start` made none here) the cluster has no auth
        auth = {"RAY_AUTH_MODE": "token"} if token.exists() else {}
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env={**plain, **auth})
        assert res.returncode == 0, res.stderr[-2000:]
        protect_paths(src, tmp_path / "one", None, ProtectSettings(refine_steps=0), workers=1)
        assert _files(tmp_path / "out") == _files(tmp_path / "one")
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
