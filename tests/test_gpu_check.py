"""`benchmarks/gpu_check.sh --dry-run`: the GPU check's whole code path on CPU (128 px, 2 iterations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    for name in ("env", "train", "bf16_vs_fp32", "inference", "torchvision", "deform_core", "ddp"):
        assert name in res and "error" not in res[name], (name, res.get(name))
    assert res["plan"]["size"] == 128 and res["plan"]["device"] == "cpu"
    assert res["train"]["iterations"] == 2 and res["train"]["all_losses_finite"]
    assert res["train"]["img_s"] > 0
    # fp32 on both sides in the dry run (autocast disabled on CPU): identical losses from equal weights
    assert res["bf16_vs_fp32"]["max_rel_diff"] == 0.0
    assert res["inference"]["eager"]["fps_b1"] > 0 and res["inference"]["compiled"]["fps_b1"] > 0
    assert res["torchvision"]["fps_b1"] > 0 and res["torchvision"]["train_img_s"] > 0
    assert res["deform_core"]["max_abs_diff"] < 1e-5 and res["deform_core"]["speedup"] > 1
    assert res["ddp"].get("skipped")  # no GPU: the DDP step needs two
    table = {r["what"]: r for r in res["goal_table"]}
    assert table["every loss finite"]["verdict"] == "PASS"
    assert "inference FPS, batch 8" in proc.stdout  # the printed table against the goals
