"""A plain `tbx bench --gt … --pred …` line skips typer (tbx/cli/boundary.py): it must behave exactly as
the typer command (output, exit code, JSON, one-line errors), and every other line must go to typer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tbx.bench.results_io import write_bbox_result, write_cls_result
from tbx.cli import boundary

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def case(tmp_path: Path) -> tuple[Path, Path]:
    images = [
        {"id": 1, "file_name": "tb/a.png", "width": 64, "height": 64},
        {"id": 2, "file_name": "tb/c.png", "width": 64, "height": 64},
        {"id": 3, "file_name": "health/b.png", "width": 64, "height": 64},
        {"id": 4, "file_name": "sick/d.png", "width": 64, "height": 64},
    ]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [30, 30, 10, 12], "area": 120, "iscrowd": 0},
    ]
    cats = [{"id": 1, "name": "ActiveTuberculosis"}, {"id": 2, "name": "ObsoletePulmonaryTuberculosis"}]
    (tmp_path / "gt.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    probs = np.array([[0.1, 0.1, 0.8], [0.2, 0.3, 0.5], [0.8, 0.1, 0.1], [0.2, 0.6, 0.2]])
    write_cls_result(tmp_path / "pred" / "cls_result.txt", probs)
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [6, 5, 20, 20], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [30, 31, 10, 12], "score": 0.7},
        {"image_id": 3, "category_id": 2, "bbox": [1, 1, 9, 9], "score": 0.4},
    ]
    write_bbox_result(tmp_path / "pred" / "bbox_result.json", dets)
    return tmp_path / "gt.json", tmp_path / "pred"


def test_plain_lines_parsed_like_typer(tmp_path: Path) -> None:
    got = boundary.plain_bench_args(
        ["bench", "--pred", "P", "--gt", "G.json", "--bootstrap", "007", "--seed", "3", "--keep-uncertain"]
    )
    assert got == {
        "pred": Path("P"),
        "gt": Path("G.json"),
        "bootstrap": 7,
        "seed": 3,
        "keep_uncertain": True,
    }
    assert boundary.plain_bench_args(["bench", "--gt", "G", "--pred", "P", "--mode", "tb-only"]) == {
        "gt": Path("G"),
        "pred": Path("P"),
        "mode": "tb-only",
    }


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bench"],
        ["bench", "--help"],
        ["--debug", "bench", "--gt", "G", "--pred", "P"],
        ["bench", "--gt", "G"],  # --pred missing: typer's path raises the TbxError
        ["bench", "--gt=G", "--pred", "P"],
        ["bench", "--gt", "G", "--pred", "P", "--gt", "H"],  # repeated
        ["bench", "--gt", "G", "--pred", "P", "--bootstrap", "-1"],
        ["bench", "--gt", "G", "--pred", "P", "--bootstrap", "1e3"],
        ["bench", "--gt", "G", "--pred", "P", "--bootstrap", "²"],
        ["bench", "--gt", "G", "--pred", "P", "--seed"],  # value missing
        ["bench", "--gt", "G", "--pred", "P", "--unknown", "x"],
        ["bench", "--gt", "G", "--pred", "P", "extra"],
        ["bench", "--gt", "", "--pred", "P"],
        ["bench", "compare", "A", "B", "--gt", "G"],
        ["train", "--gt", "G", "--pred", "P"],
    ],
)
def test_other_lines_go_to_typer(argv: list[str]) -> None:
    assert boundary.plain_bench_args(argv) is None


def _run(cli, monkeypatch, fast: bool, *args: str) -> tuple[int, str, str]:
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(boundary, "plain_bench_args", lambda argv: None)
        return cli(*args)


@pytest.mark.parametrize(
    "extra",
    [
        ["--bootstrap", "20", "--keep-uncertain"],
        ["--mode", "tb-only", "--seed", "5", "--bootstrap", "10"],
        ["--mode", "nonsense"],  # TbxError: one line, exit 2
    ],
)
def test_fast_path_equals_typer_command(cli, monkeypatch, case, tmp_path: Path, extra: list[str]) -> None:
    gt, pred = case
    outs = {}
    for fast in (True, False):
        js = tmp_path / ("fast" if fast else "typer") / "r.json"
        rc, out, err = _run(cli, monkeypatch, fast, "bench", "--gt", gt, "--pred", pred, "--json", js, *extra)
        res = json.loads(js.read_text()) if js.exists() else None
        outs[fast] = (rc, out.replace(str(js), "R"), err, res)
    assert outs[True] == outs[False]
    rc, out, err, res = outs[True]
    if "nonsense" in extra:
        assert rc == 2 and err.startswith("error: unknown mode 'nonsense'") and err.count("\n") == 1
    else:
        assert rc == 0 and res is not None and "TB area detection" in out


def test_missing_gt_file_same_one_line_error(cli, monkeypatch, case, tmp_path: Path) -> None:
    _, pred = case
    args = ("bench", "--gt", tmp_path / "no.json", "--pred", pred)
    fast, slow = _run(cli, monkeypatch, True, *args), _run(cli, monkeypatch, False, *args)
    assert fast == slow and fast[0] == 2 and fast[2].startswith("error:") and fast[2].count("\n") == 1


def test_python_m_tbx_bench_imports_no_typer(case) -> None:
    gt, pred = case
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['tbx', 'bench', '--gt', {str(gt)!r}, '--pred', {str(pred)!r}]\n"
        "try:\n"
        "    runpy.run_module('tbx', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    rc = e.code\n"
        "heavy = sorted(m for m in ('typer', 'pydantic', 'scipy', 'torch') if m in sys.modules)\n"
        "print('HEAVY', heavy, rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "HEAVY [] 0" in out.stdout, out.stdout + out.stderr
