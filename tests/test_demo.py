"""End to end: `tbx demo` on a very small synthetic export (every step, real training, no oracle)."""

from __future__ import annotations

import csv
import json
import os

import pytest
from PIL import Image

from tbx.demo import MARKER, DemoConfig, run_demo
from tbx.errors import TbxError


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cfg = DemoConfig(
        n_healthy=8,
        n_sick=8,
        n_active=8,
        n_latent=4,
        n_both=2,
        n_uncertain=2,
        overrides=["stage1.epochs=1", "stage2.epochs=1", "model.input_size=64"],
        bootstrap=10,
        workers=1,
        n_new_patients=12,
        n_explain=3,
    )
    lines: list[str] = []
    outputs = run_demo(out, cfg, say=lines.append)
    assert sum(ln.startswith("[") for ln in lines) == 13  # every step announced
    for path in outputs.values():
        assert path.exists(), path
    # the test list holds every test image, and the predictions have one line per image
    ann = json.loads((out / "TBX11K/annotations/json/all_test.json").read_text())
    cls_lines = (out / "run/predictions/cls_result.txt").read_text().splitlines()
    assert len(cls_lines) == len(ann["images"]) > 0
    bench = json.loads(outputs["bench"].read_text())
    assert 0.0 <= bench["classification"]["accuracy"] <= 1.0
    assert "ci" in bench
    # the uncertain-type TB images are all in the test split
    test_files = {i["file_name"] for i in ann["images"]}
    trainval = json.loads((out / "TBX11K/annotations/json/all_trainval.json").read_text())
    assert not test_files & {i["file_name"] for i in trainval["images"]}
    compare = json.loads((out / "study/study_compare.json").read_text())
    assert compare["readers"][0]["name"].startswith("simulated")
    html = outputs["report"].read_text()
    assert "<html" in html.lower() and "data:image/png;base64" in html
    with Image.open(next((out / "report/figures").glob("*.png"))) as im:
        assert im.size[0] > 100
    assert (out / "raw/manifest.csv").is_file()  # the hospital-style export (PHI: test_build.py)
    # explain: one heatmap per explained TB image, and the report shows the section
    assert len(list((out / "run/explain/gradcam/heatmaps").glob("*.npy"))) == 3
    assert "Where the models look" in html and (out / "report/tables/explain.md").is_file()
    # deploy: the ONNX model screened the 12 new patients; the check re-scored independently here
    check = json.loads(outputs["screening check"].read_text())
    assert check["backend"] == "onnxruntime" and check["n_patients"] == 12 and check["n_errors"] == 0
    truth = {
        r["file"]: r["label"] == "tb"
        for r in csv.DictReader((out / "deploy/new_patients/manifest.csv").open())
    }
    rows = list(csv.DictReader(outputs["screening"].open()))
    assert len(rows) == 12
    patients = lambda p: {r["patient_id"] for r in csv.DictReader(p.open())}  # noqa: E731
    assert not patients(out / "deploy/new_patients/manifest.csv") & patients(out / "raw/manifest.csv")
    thr = float(rows[0]["threshold"]) if rows[0]["threshold"] != "argmax" else None
    hits = []
    for r in rows:
        p = [float(r["p_healthy"]), float(r["p_sick"]), float(r["p_tb"])]
        says_tb = p[2] >= thr if thr is not None else p.index(max(p)) == 2
        assert says_tb == (r["decision"] == "TB")
        hits.append((truth[os.path.relpath(r["source"], out / "deploy/new_patients")], says_tb))
    n_tb = sum(t for t, _ in hits)
    assert check["n_tb"] == n_tb == 4
    assert check["sensitivity"] == pytest.approx(sum(t and d for t, d in hits) / n_tb)
    assert check["specificity"] == pytest.approx(sum(not t and not d for t, d in hits) / (12 - n_tb))
    lo, hi = check["sensitivity_ci95"]
    assert 0 <= lo <= check["sensitivity"] <= hi <= 1
    # a second run replaces the earlier demo folder; a foreign folder is refused
    assert (out / MARKER).is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("keep me")
    with pytest.raises(TbxError, match="not created by tbx"):
        run_demo(foreign, cfg, say=lines.append)
    assert (foreign / "x.txt").read_text() == "keep me"
