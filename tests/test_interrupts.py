"""Interrupts and kills (issue 21): Ctrl-C ends in one line and exit 130 with no temporary file
left; ``kill -9`` of ``dataset build --workers 2`` and of training leaves no process behind, and
the rerun (``--resume`` for training) gives exactly the result of an uninterrupted run, with no
temporary file left (a half-saved checkpoint of the killed run included)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_fixtures import make_layout

from tbx.engine.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _tbx(*args: object) -> list[str]:
    return [sys.executable, "-m", "tbx", *map(str, args)]


def _start(*args: object) -> subprocess.Popen:
    return subprocess.Popen(
        _tbx(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited (only not yet reaped by its new parent)


def _wait_for(cond, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".partial")]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("raw") / "export"
    proc = subprocess.run(
        _tbx(
            "dataset",
            "synth",
            src,
            "--raw",
            "--size",
            "192",
            "--n-healthy",
            "24",
            "--n-sick",
            "20",
            "--n-active",
            "12",
            "--n-latent",
            "6",
            "--n-both",
            "2",
            "--n-uncertain",
            "0",
            "--workers",
            "2",
        ),
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return src


def _build_until_decoding(raw: Path, out: Path) -> tuple[subprocess.Popen, list[int]]:
    """Start ``tbx dataset build RAW OUT --workers 2``; return once it has decoded a few images,
    with the pids of its worker processes."""
    proc = _start("dataset", "build", raw, out, "--workers", "2")
    work = out.with_name(f"{out.name}.partial") / ".work"
    _wait_for(
        lambda: work.is_dir() and len(list(work.glob("*.png"))) >= 3 or proc.poll() is not None,
        60,
        "the build to start decoding",
    )
    assert proc.poll() is None, "the build ended before it could be interrupted"
    return proc, _children(proc.pid)


# build_report.json counts decoded vs reused images, provenance.json holds the time
VOLATILE = ("build_report.json", "provenance.json")


@pytest.mark.slow
def test_ctrl_c_of_build_prints_one_line_and_leaves_no_temp(raw, tmp_path):
    out = tmp_path / "out"
    proc, kids = _build_until_decoding(raw, out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["interrupted — rerun the same command to continue"]
    _wait_for(lambda: not any(_alive(k) for k in kids), 10, "the workers to stop")
    assert not [p for p in tmp_path.rglob("*.tmp")]
    rerun = subprocess.run(
        _tbx("dataset", "build", raw, out, "--workers", "2"), env=_env(), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert _temps(tmp_path) == []


@pytest.mark.slow
def test_kill_9_of_build_leaves_no_worker_and_the_rerun_equals_a_straight_build(raw, tmp_path):
    straight = tmp_path / "straight"
    assert (
        subprocess.run(_tbx("dataset", "build", raw, straight), env=_env(), capture_output=True).returncode
        == 0
    )
    out = tmp_path / "out"
    proc, kids = _build_until_decoding(raw, out)
    assert len(kids) >= 2  # the two decoding workers (+ the executor's resource tracker, if any)
    proc.kill()
    proc.wait(timeout=10)
    _wait_for(lambda: not any(_alive(k) for k in kids), 10, "the orphaned workers to exit")
    rerun = subprocess.run(
        _tbx("dataset", "build", raw, out, "--workers", "2"), env=_env(), capture_output=True, text=True
    )
    assert rerun.returncode == 0, rerun.stderr
    assert _tree(out, VOLATILE) == _tree(straight, VOLATILE)
    assert _temps(tmp_path) == []


TRAIN = [
    "--config",
    "tiny",
    "--set",
    "model.input_size=64",
    "--set",
    "stage1.epochs=3",
    "--set",
    "stage1.batch_size=2",
    "--set",
    "stage2.epochs=1",
    "--set",
    "stage2.batch_size=4",
    "--set",
    "data.workers=0",
    "--set",
    "ckpt_every_iters=1",
    "--set",
    "log_every=1",
    "--set",
    "model.retinanet.width=16",
    "--set",
    "model.cls_channels=16",
]


def _same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.slow
def test_kill_9_of_training_then_resume_equals_a_straight_run(tmp_path):
    root = make_layout(tmp_path / "data", n_tb=6, n_healthy=2, n_sick=2, size=64)
    straight = tmp_path / "straight"
    done = subprocess.run(
        _tbx("train", "symformer", "--data", root, "--out", straight, *TRAIN),
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    run = tmp_path / "run"
    proc = _start("train", "symformer", "--data", root, "--out", run, *TRAIN)
    last = run / "stage1" / "last.pt"
    _wait_for(lambda: last.is_file() or proc.poll() is not None, 120, "the first checkpoint")
    time.sleep(0.5)
    assert proc.poll() is None, "training ended before it could be killed"
    kids = _children(proc.pid)
    proc.kill()
    proc.wait(timeout=10)
    _wait_for(lambda: not any(_alive(k) for k in kids), 10, "the orphaned processes to exit")
    # what a kill during a checkpoint save leaves: a temporary sibling of last.pt
    stale = last.with_name(".last.pt.k1ll3d.tmp")
    stale.write_bytes(b"\0" * 4096)
    again = subprocess.run(
        _tbx("train", "symformer", "--data", root, "--out", run, *TRAIN),
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert again.returncode == 2 and "--resume" in again.stderr  # the run is a record
    resumed = subprocess.run(
        _tbx("train", "--data", root, "--out", run, "--resume"), env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    for s in (1, 2):
        _same_weights(run / f"stage{s}" / "final.pt", straight / f"stage{s}" / "final.pt")
    assert _temps(tmp_path) == [] and not stale.exists()


@pytest.mark.slow
def test_ctrl_c_of_training_says_how_to_continue(tmp_path):
    root = make_layout(tmp_path / "data", n_tb=6, n_healthy=2, n_sick=2, size=64)
    run = tmp_path / "run"
    proc = _start("train", "symformer", "--data", root, "--out", run, *TRAIN)
    last = run / "stage1" / "last.pt"
    _wait_for(lambda: last.is_file() or proc.poll() is not None, 120, "the first checkpoint")
    assert proc.poll() is None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines() == ["interrupted — rerun the same command with --resume to continue"]
    assert _temps(tmp_path) == []
    resumed = subprocess.run(
        _tbx("train", "--data", root, "--out", run, "--resume"), env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
