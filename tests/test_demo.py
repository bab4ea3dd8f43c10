"""End to end: `tbx demo` on a very small synthetic export (every step, real training, no oracle)."""

from __future__ import annotations

import json

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
    )
    lines: list[str] = []
    outputs = run_demo(out, cfg, say=lines.append)
    assert sum(ln.startswith("[") for ln in lines) == 11  # every step announced
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
    # a second run replaces the earlier demo folder; a foreign folder is refused
    assert (out / MARKER).is_file()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("keep me")
    with pytest.raises(TbxError, match="not created by tbx"):
        run_demo(foreign, cfg, say=lines.append)
    assert (foreign / "x.txt").read_text() == "keep me"
