"""End to end through the CLI: `tbx train symformer --config tiny` (both stages, tiny sizes) then
`tbx predict RUN`, whose files the bench readers accept."""

from __future__ import annotations

import json

from engine_fixtures import make_layout

from tbx.bench.results_io import read_bbox_result, read_cls_result
from tbx.data.coco import read_coco


def test_train_then_predict_cli(cli, tmp_path):
    root = make_layout(tmp_path / "data", n_tb=4, n_healthy=2, n_sick=2, size=64)
    run = tmp_path / "run"
    sets = [
        "model.input_size=64",
        "stage1.epochs=1",
        "stage1.batch_size=4",
        "stage2.epochs=1",
        "stage2.batch_size=4",
        "data.workers=0",
        "log_every=1",
    ]
    args = ["train", "symformer", "--config", "tiny", "--data", root, "--out", run]
    for s in sets:
        args += ["--set", s]
    code, out, err = cli(*args)
    assert code == 0, err
    assert (run / "stage1" / "final.pt").is_file() and (run / "stage2" / "final.pt").is_file()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_cls", "loss_box"} <= rows[0].keys()

    ann = root / "annotations" / "json" / "all_trainval.json"
    code, out, err = cli(
        "predict",
        run,
        "--data",
        root,
        "--ann",
        ann,
        "--out",
        tmp_path / "pred",
        "--workers",
        "0",
        "--batch",
        "3",
    )
    assert code == 0, err
    recs = read_coco(ann)
    probs = read_cls_result(tmp_path / "pred" / "cls_result.txt", len(recs))
    assert probs.shape == (8, 3)
    read_bbox_result(tmp_path / "pred" / "bbox_result.json", [r.image_id for r in recs], [1, 2])
    man = json.loads((tmp_path / "pred" / "manifest.json").read_text())
    assert man["model"] == "symformer_retinanet" and man["checkpoint"].endswith("stage2/final.pt")


def test_cli_errors(cli, tmp_path):
    code, _, err = cli("train", "nosuchmodel", "--data", tmp_path, "--out", tmp_path / "r")
    assert code == 2 and "unknown model" in err
    code, _, err = cli(
        "train", "symformer", "--config", "tiny", "--data", tmp_path, "--out", tmp_path / "r", "--stage", "3"
    )
    assert code == 2 and "--stage" in err
    code, _, err = cli(
        "predict", tmp_path / "nothing", "--data", tmp_path, "--ann", "a.json", "--out", tmp_path / "p"
    )
    assert code == 2 and "not found" in err


def test_failed_start_leaves_no_run_directory(cli, tmp_path):
    """Missing backbone weights: one clear line, exit 2, and no half-made run directory."""
    root = make_layout(tmp_path / "data", n_tb=2, n_healthy=1, n_sick=1, size=64)
    run = tmp_path / "run"
    code, _, err = cli(
        "train",
        "symformer",
        "--config",
        "tiny",
        "--data",
        root,
        "--out",
        run,
        "--set",
        f"model.pretrained={tmp_path / 'missing.pth'}",
        "--set",
        "data.workers=0",
    )
    assert code == 2 and "missing.pth" in err
    assert not run.exists()
