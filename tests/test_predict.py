"""`predict`: official files, ANN.json order, boxes in the annotation (original-pixel) frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
from engine_fixtures import OracleDetector, oracle_builder
from PIL import Image

from tbx.bench.results_io import read_bbox_result, read_cls_result
from tbx.config import to_dict
from tbx.data.coco import write_coco
from tbx.data.records import Record
from tbx.engine.checkpoint import file_sha256, save_checkpoint
from tbx.engine.predict import predict
from tbx.engine.schedule import TrainConfig
from tbx.errors import TbxError
from tbx.models.config import ModelConfig


@pytest.fixture()
def layout(tmp_path):
    """Five non-square PNGs of known brightness; the annotation file says they are 10× larger
    (boxes/frames at the original scanner resolution) and lists them in a shuffled order with
    non-positional ids."""
    root = tmp_path / "data"
    (root / "imgs" / "health").mkdir(parents=True)
    sizes = [(80, 48), (48, 80), (64, 64), (100, 30), (33, 77)]  # (w, h) of the PNG files
    levels = [30, 200, 120, 90, 250]
    recs = []
    for k, ((w, h), v) in enumerate(zip(sizes, levels)):
        Image.fromarray(np.full((h, w), v, np.uint8), "L").save(root / "imgs" / "health" / f"h{k}.png")
        recs.append(Record(100 + 7 * k, f"health/h{k}.png", 10 * w, 10 * h, "healthy"))
    order = [3, 0, 4, 1, 2]
    write_coco(root / "ann.json", [recs[i] for i in order])
    return root, [recs[i] for i in order], [levels[i] for i in order]


def _checkpoint(tmp_path, input_size=64):
    cfg = TrainConfig(model_name="oracle", model=ModelConfig(input_size=input_size))
    return save_checkpoint(
        tmp_path / "oracle.pt",
        model=OracleDetector(),
        model_name="oracle",
        config=to_dict(cfg),
        stage=2,
        epoch=1,
        batch=0,
        iteration=1,
    )


@pytest.mark.parametrize("batch", [1, 2])
def test_predict_order_frame_and_files(layout, tmp_path, batch):
    root, recs, levels = layout
    ckpt = _checkpoint(tmp_path)
    out = predict(
        ckpt,
        root,
        "ann.json",
        tmp_path / "pred",
        batch_size=batch,
        workers=0,
        model_builder=oracle_builder,
        progress=False,
    )
    # cls_result: line i ↔ image i of ann.json; the oracle's p(healthy) = image brightness
    probs = read_cls_result(out / "cls_result.txt", len(recs))
    np.testing.assert_allclose(probs[:, 0], np.array(levels) / 255, atol=2e-3)
    # bbox_result: ann.json image ids; box at 25–75 % × 25–50 % of the ORIGINAL frame (10× PNG)
    dets = read_bbox_result(out / "bbox_result.json", [r.image_id for r in recs], [1, 2])
    assert [d["image_id"] for d in dets] == [r.image_id for r in recs]
    for d, r in zip(dets, recs):
        W, H = r.width, r.height
        np.testing.assert_allclose(d["bbox"], [0.25 * W, 0.25 * H, 0.5 * W, 0.25 * H], rtol=0.02)
        assert d["category_id"] == 1 and d["score"] == pytest.approx(0.9)
    man = json.loads((out / "manifest.json").read_text())
    assert man["model"] == "oracle" and man["n_images"] == 5
    assert man["checkpoint_sha256"] == file_sha256(ckpt)
    assert len(man["image_list_sha256"]) == 64 and man["config"]["model_name"] == "oracle"
    assert (out / "provenance.json").is_file()


def test_predict_errors(layout, tmp_path):
    root, _, _ = layout
    with pytest.raises(TbxError, match="not found"):
        predict(tmp_path / "missing_run", root, "ann.json", tmp_path / "p", model_builder=oracle_builder)
    ckpt = _checkpoint(tmp_path)
    with pytest.raises(TbxError, match="annotation file not found"):
        predict(ckpt, root, "nope.json", tmp_path / "p", model_builder=oracle_builder, workers=0)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(TbxError, match="cannot read checkpoint"):
        predict(bad, root, "ann.json", tmp_path / "p", model_builder=oracle_builder)
