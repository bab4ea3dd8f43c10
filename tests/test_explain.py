"""`tbx explain`: heatmaps of a network whose answer is known, scores recomputed independently from
the saved .npy files, the source frame for non-square images, the CLI on a real tbx model."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from engine_fixtures import make_layout, save_untrained_run
from PIL import Image
from torch import nn

from tbx.config import to_dict
from tbx.data.coco import write_coco
from tbx.data.records import Box, Record
from tbx.engine.checkpoint import save_checkpoint
from tbx.engine.schedule import TrainConfig
from tbx.errors import TbxError
from tbx.explain import explain, heatmaps, render_overlay
from tbx.models.base import Detector, Prediction
from tbx.models.config import DetrConfig, ModelConfig

pytest.importorskip("pytorch_grad_cam")

INPUT = 128  # network input side; sources of 150 × 300 become 64 × 128 (scale 0.4267), no padding
STRIDE = 4
REGION = (4, 10, 8, 20)  # feature cells rows 4..9, cols 8..19 → input px rows 16–40, cols 32–80
SRC_H, SRC_W = 150, 300
SCALE = 128 / 300
BOX = [32 / SCALE, 16 / SCALE, 48 / SCALE, 24 / SCALE]  # REGION in the source frame: [75, 37.5, 112.5, 56.25]


class RegionHead(nn.Module):
    """logits: healthy = mean of channel 1 over the map, sick = 0, TB = mean of channel 0 over REGION
    (channel 0 is zero outside it)."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(()))  # a parameter, so the CAM library finds a device
        r0, r1, c0, c1 = REGION
        self.n_region = (r1 - r0) * (c1 - c0)

    def forward(self, a):
        tb = a[:, 0].sum(dim=(1, 2)) / self.n_region
        healthy = a[:, 1].mean(dim=(1, 2))
        return self.gain * torch.stack([healthy, torch.zeros_like(tb), tb], 1)


class RegionNet(Detector):
    """A hand-built detector whose TB logit is the mean of one image region: the "backbone" is the
    image's first channel average-pooled by 4 (+3, so every activation is positive), split into
    channel 0 = inside REGION, channel 1 = outside; no boxes."""

    def __init__(self):
        super().__init__()
        self.cls_head = RegionHead()

    def features(self, images):
        f = F.avg_pool2d(images[:, :1], STRIDE) + 3.0
        mask = torch.zeros_like(f)
        r0, r1, c0, c1 = REGION
        mask[..., r0:r1, c0:c1] = 1.0
        return torch.cat([f * mask, f * (1 - mask)], 1)

    @torch.no_grad()
    def predict(self, images, image_sizes=None):
        probs = self.cls_head(self.features(images)).softmax(-1)
        empty = torch.zeros((0, 4))
        return [Prediction(p, empty, torch.zeros(0), torch.zeros(0, dtype=torch.int64)) for p in probs]


def region_builder(cfg):
    return RegionNet()


def coverage_mask(shape, boxes):
    """Independent box rule: pixel (r, c) is covered when its unit square [c, c+1) × [r, r+1)
    overlaps the open box (x, x+w) × (y, y+h)."""
    rows, cols = np.indices(shape)
    m = np.zeros(shape, bool)
    for x, y, w, h in boxes:
        m |= (cols + 1 > x) & (cols < x + w) & (rows + 1 > y) & (rows < y + h)
    return m


@pytest.fixture(scope="module")
def region_run(tmp_path_factory):
    """A checkpoint of RegionNet and a dataset: a TB image with the REGION box, a healthy one."""
    tmp = tmp_path_factory.mktemp("region")
    root = tmp / "data"
    rng = np.random.default_rng(0)
    recs = []
    for k, (folder, label) in enumerate((("tb", "tb"), ("health", "healthy"))):
        (root / "imgs" / folder).mkdir(parents=True)
        arr = rng.integers(60, 200, (SRC_H, SRC_W)).astype(np.uint8)
        Image.fromarray(arr, "L").save(root / "imgs" / folder / f"x{k}.png")
        boxes = [Box(*BOX, 1)] if label == "tb" else []
        recs.append(Record(k + 1, f"{folder}/x{k}.png", SRC_W, SRC_H, label, boxes=boxes))
    write_coco(root / "ann.json", recs)
    cfg = TrainConfig(model_name="region", model=ModelConfig(input_size=INPUT))
    ckpt = save_checkpoint(
        tmp / "region.pt",
        model=RegionNet(),
        model_name="region",
        config=to_dict(cfg),
        stage=2,
        epoch=1,
        batch=0,
        iteration=1,
    )
    return ckpt, root


def _explain_region(region_run, out, **kw):
    ckpt, root = region_run
    kw = {"workers": 0, "progress": False, **kw}
    return explain(ckpt, out, data_root=root, ann="ann.json", model_builder=region_builder, **kw)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam", "layercam"])
def test_known_region_energy_and_pointing(region_run, tmp_path, method):
    out = _explain_region(region_run, tmp_path / "out", method=method, target="tb")
    doc = json.loads((out / "explain.json").read_text())
    assert doc["method"] == method and doc["target"] == "tb" and doc["n_scored"] == 1
    tb, healthy = doc["images"]
    hm = np.load(out / tb["heatmap"])
    assert hm.dtype == np.float32 and hm.shape == (SRC_H, SRC_W)  # the source frame, not 64 × 128
    assert hm.min() >= 0 and hm.max() == pytest.approx(1.0)
    # scores recomputed here from the saved heatmap and the box, with an independent box rule
    inside = coverage_mask(hm.shape, [BOX])
    energy = float(hm[inside].sum() / hm.sum())
    r, c = np.unravel_index(np.argmax(hm), hm.shape)
    assert energy >= 0.9
    assert tb["energy_in_boxes"] == pytest.approx(energy, abs=1e-6)
    assert tb["pointing_hit"] == int(inside[r, c]) == 1
    assert doc["mean_energy_in_boxes"] == pytest.approx(energy, abs=1e-6) and doc["pointing_game"] == 1.0
    # the healthy image has no boxes: no scores, but its heatmap and overlay exist
    assert healthy["energy_in_boxes"] is None and healthy["pointing_hit"] is None
    assert np.load(out / healthy["heatmap"]).shape == (SRC_H, SRC_W)
    with Image.open(out / tb["overlay"]) as im:
        assert im.mode == "RGB" and im.width >= SRC_W
    assert (out / ".tbx-output.json").is_file() and (out / "provenance.json").is_file()


def test_boxes_in_another_annotation_frame(region_run, tmp_path):
    """The annotation frame is 2× the PNG (boxes at scanner resolution): the heatmap stays in the
    PNG's frame and the boxes are scaled into it, so the score is the one of the 1× annotation."""
    ckpt, root = region_run
    recs = [Record(1, "tb/x0.png", 2 * SRC_W, 2 * SRC_H, "tb", boxes=[Box(*(2 * v for v in BOX), 1)])]
    write_coco(tmp_path / "ann2.json", recs)
    out = explain(
        ckpt,
        tmp_path / "o",
        data_root=root,
        ann=tmp_path / "ann2.json",
        workers=0,
        target="tb",
        model_builder=region_builder,
        progress=False,
    )
    (im,) = json.loads((out / "explain.json").read_text())["images"]
    hm = np.load(out / im["heatmap"])
    assert hm.shape == (SRC_H, SRC_W)
    assert im["energy_in_boxes"] == pytest.approx(
        hm[coverage_mask(hm.shape, [BOX])].sum() / hm.sum(), abs=1e-6
    )


def test_other_class_looks_elsewhere(region_run, tmp_path):
    """The healthy logit reads everything but REGION: its Grad-CAM map avoids the box."""
    out = _explain_region(region_run, tmp_path / "out", target="healthy")
    tb = json.loads((out / "explain.json").read_text())["images"][0]
    hm = np.load(out / tb["heatmap"])
    assert float(hm[coverage_mask(hm.shape, [BOX])].sum() / hm.sum()) < 0.1
    assert tb["energy_in_boxes"] < 0.1 and tb["pointing_hit"] == 0


def test_scores_module_matches_independent_rule():
    from tbx.explain.scores import box_mask, energy_in_boxes, pointing_hit

    rng = np.random.default_rng(3)
    for _ in range(50):
        hm = rng.random((23, 31)).astype(np.float32)
        boxes = [
            list(rng.uniform(-3, 25, 2)) + list(rng.uniform(0.2, 12, 2)) for _ in range(rng.integers(1, 4))
        ]
        m = coverage_mask(hm.shape, boxes)
        np.testing.assert_array_equal(box_mask(hm.shape, boxes), m)
        assert energy_in_boxes(hm, boxes) == pytest.approx(hm[m].sum() / hm.sum())
        r, c = np.unravel_index(np.argmax(hm), hm.shape)
        assert pointing_hit(hm, boxes) == int(m[r, c])
    assert energy_in_boxes(np.zeros((4, 4)), [[0, 0, 2, 2]]) == 0.0
    assert pointing_hit(np.zeros((4, 4)), [[0, 0, 2, 2]]) == 0


def test_heatmaps_api_source_frame():
    """Library API (tbx screen --heatmaps): one map per image, each in its own non-square frame."""
    model = RegionNet().eval()
    rng = np.random.default_rng(1)
    imgs = [
        rng.integers(0, 255, (SRC_H, SRC_W), dtype=np.uint8),
        rng.integers(0, 255, (97, 41, 3), dtype=np.uint8),
        torch.from_numpy(rng.integers(0, 255, (64, 64), dtype=np.uint8)),
    ]
    with torch.inference_mode():  # a caller such as `tbx screen` may run in inference mode
        maps = heatmaps(model, imgs, "gradcam", "tb", input_size=INPUT, batch_size=2)
    assert [m.shape for m in maps] == [(SRC_H, SRC_W), (97, 41), (64, 64)]
    assert all(m.dtype == np.float32 and 0 <= m.min() and m.max() <= 1 for m in maps)
    inside = coverage_mask(maps[0].shape, [BOX])
    assert maps[0][inside].sum() / maps[0].sum() >= 0.9
    rgb = render_overlay(imgs[0], maps[0], gt=[BOX], pred=[[10, 10, 40, 30, 0.8]], lines=["x"])
    s = 640 / SRC_W  # panels are drawn with their longer side 640 px, under a caption strip
    top = rgb.shape[0] - round(SRC_H * s)
    assert rgb.dtype == np.uint8 and rgb.shape[1:] == (640, 3) and top > 0
    x, y, w, h = (v * s for v in BOX)  # the ground-truth box: a white outline at the scaled place
    assert (rgb[top + round(y), round(x + w / 2)] == 255).all() and (
        rgb[top + round(y + h / 2), round(x)] == 255
    ).all()
    with pytest.raises(TbxError, match="uint8"):
        heatmaps(model, [np.zeros((8, 8), np.float32)], input_size=INPUT)


def test_errors(region_run, tmp_path):
    with pytest.raises(TbxError, match="unknown explain method"):
        _explain_region(region_run, tmp_path / "o", method="scorecam")
    with pytest.raises(TbxError, match="unknown explain target"):
        _explain_region(region_run, tmp_path / "o", target="lung")
    with pytest.raises(TbxError, match="--out is needed"):
        _explain_region(region_run, None)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(TbxError, match="not an earlier 'tbx explain' output"):
        _explain_region(region_run, foreign)
    assert (foreign / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An untrained model of the `tiny` preset (symformer_retinanet) saved as a run directory."""
    tmp = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    run = save_untrained_run(tmp / "run", ["model.input_size=96", "model.retinanet.cls_input_size=64"])
    root = make_layout(tmp / "data", n_tb=2, n_healthy=1, n_sick=0, size=64)
    return run, root


def test_cli_on_tiny_model(cli, tiny_run, tmp_path):
    run, root = tiny_run
    code, out, err = cli(
        "explain",
        run,
        "--data",
        root,
        "--ann",
        "annotations/json/all_trainval.json",
        "--method",
        "gradcam",
        "--target",
        "tb",
        "--workers",
        "0",
    )
    assert code == 0, err
    folder = run / "explain" / "gradcam"  # the default output, where `tbx report` looks
    doc = json.loads((folder / "explain.json").read_text())
    assert doc["model"] == "symformer_retinanet" and len(doc["images"]) == 3 and doc["n_scored"] == 2
    for im in doc["images"]:
        assert np.load(folder / im["heatmap"]).shape == (64, 64)
        assert (folder / im["overlay"]).is_file()
    assert "pointing game" in out
    # SymFormer: the pyramid before/after SAS, scored both ways; image files (non-square) as input
    src = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (50, 120), dtype=np.uint8), "L").save(src)
    code, out, err = cli("explain", run, src, "--method", "features", "--out", tmp_path / "feat")
    assert code == 0, err
    doc = json.loads((tmp_path / "feat" / "explain.json").read_text())
    (im,) = doc["images"]
    assert doc["maps"]["after"] == "after the SAS block" and im["energy_in_boxes"] is None
    assert np.load(tmp_path / "feat" / im["heatmap"]).shape == (50, 120)
    assert np.load(tmp_path / "feat" / im["heatmap_before"]).shape == (50, 120)
    # a rerun replaces its own earlier output
    code, _, err = cli("explain", run, src, "--method", "eigencam", "--out", tmp_path / "feat")
    assert code == 0, err
    assert json.loads((tmp_path / "feat" / "explain.json").read_text())["method"] == "eigencam"


def test_cli_unsupported_method_one_line(cli, tiny_run):
    run, root = tiny_run
    code, out, err = cli(
        "explain", run, "--data", root, "--ann", "annotations/json/all_trainval.json", "--method", "fullgrad"
    )
    assert code == 2
    assert err.count("\n") == 1 and "unknown explain method 'fullgrad'" in err and "gradcam++" in err
    assert not (run / "explain" / "fullgrad").exists()


def test_missing_grad_cam_one_line(region_run, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import fails as if not installed
    with pytest.raises(TbxError, match=r"needs the grad-cam package.*tbx\[explain\]"):
        _explain_region(region_run, tmp_path / "o")
    # the features method does not need it (and RegionNet has no symmetric block)
    with pytest.raises(TbxError, match="only SymFormer models"):
        _explain_region(region_run, tmp_path / "o", method="features")


def test_report_section(region_run, tmp_path):
    """`tbx report` reads RUN/explain/<method>/explain.json: score table + best/worst gallery."""
    from tbx.bench.report.explain import best_and_worst, explain_section, explain_table
    from tbx.bench.report.render import render_csv, render_latex, render_markdown

    run = tmp_path / "run"
    _explain_region(region_run, run / "explain" / "gradcam", target="tb")
    (run / "explain" / "broken").mkdir()
    (run / "explain" / "broken" / "explain.json").write_text("{not json")
    table = explain_table([("myrun", run)])
    assert table is not None and len(table.rows) == 1  # the broken file costs its row only
    # the table's numbers are the per-image scores of the heatmap files, recomputed here
    doc = json.loads((run / "explain" / "gradcam" / "explain.json").read_text())
    scored = [im for im in doc["images"] if im["energy_in_boxes"] is not None]
    energies = []
    for im in scored:
        hm = np.load(run / "explain" / "gradcam" / im["heatmap"])
        energies.append(hm[coverage_mask(hm.shape, [BOX])].sum() / hm.sum())
    row = next(csv.DictReader(io.StringIO(render_csv(table))))
    assert (row["run"], row["method"], row["target"], row["n_scored"]) == ("myrun", "gradcam", "tb", "1")
    assert float(row["energy_in_boxes"]) == pytest.approx(np.mean(energies), abs=6e-4)
    assert row["energy_before"] == ""  # only the features method has a before
    assert "| myrun | gradcam | tb |" in render_markdown(table) and "myrun" in render_latex(table)
    frag = explain_section([("myrun", run)], table)
    assert "Where the models look" in frag and "<td>myrun</td><td>gradcam</td><td>tb</td>" in frag
    assert ">0.943<" in frag or ">0.94" in frag  # the TB image's energy (mean over 1 scored image)
    assert frag.count("data:image/png;base64,") == 1  # one TB image with boxes → one best, no worst
    assert "best: tb/x0.png" in frag and "cannot read" in frag
    assert explain_table([("other", tmp_path / "nothing")]) is None
    assert explain_section([("other", tmp_path / "nothing")]) == ""
    imgs = [
        {"label": "tb", "energy_in_boxes": e, "file_name": f"f{k}"}
        for k, e in enumerate([0.2, 0.9, 0.5, 0.1, 0.7])
    ]
    best, worst = best_and_worst(imgs + [{"label": "healthy", "energy_in_boxes": None}], 2)
    assert [b["file_name"] for b in best] == ["f1", "f4"] and [w["file_name"] for w in worst] == ["f3", "f0"]
    best, worst = best_and_worst(imgs[:3], 2)
    assert [b["file_name"] for b in best] == ["f1", "f2"] and [w["file_name"] for w in worst] == ["f0"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "symformer_retinanet",
        "retinanet",
        "deformable_detr",
        "symformer_deformable_detr",
        "faster_rcnn",
        "fcos",
        "ssd",
    ],
)
def test_every_model(name):
    """Every model of `tbx models list`: a Grad-CAM map in the source frame; `features` for the
    SymFormer models only, one clear error for the others."""
    from tbx.models.registry import MODELS, build

    assert name in MODELS
    size = 512 if name == "ssd" else 64
    cfg = ModelConfig(
        backbone="vgg16" if name == "ssd" else "resnet18",
        pretrained="none",
        input_size=size,
        detr=DetrConfig(num_encoder_layers=1, num_decoder_layers=1, num_queries=20)
        if "detr" in name
        else None,
    )
    model = build(name, cfg).eval()
    img = np.random.default_rng(0).integers(0, 255, (80, 80) if name == "ssd" else (70, 90), dtype=np.uint8)
    (m,) = heatmaps(model, [img], "gradcam++", "tb", input_size=size)
    assert m.shape == img.shape and m.dtype == np.float32
    if name.startswith("symformer"):
        (f,) = heatmaps(model, [img], "features", input_size=size)
        assert f.shape == img.shape and f.max() == pytest.approx(1.0)
    else:
        with pytest.raises(TbxError, match="only SymFormer models"):
            heatmaps(model, [img], "features", input_size=size)
