"""`tbx screen` / `tbx export`: real CXRs (PNG, JPEG) + DICOMs written here (MONOCHROME1, 16-bit,
PHI in the header) + a corrupt file; operating points; resume; anonymisation; ONNX parity; 2 gloo
ranks = 1 process."""

from __future__ import annotations

import csv
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from engine_fixtures import save_untrained_run
from PIL import Image
from test_dicom import write_dicom

from tbx.bench.classification import screening_thresholds
from tbx.deploy.backends import load_backend
from tbx.deploy.inputs import expand_inputs
from tbx.deploy.operating_points import load_operating_points, save_operating_points
from tbx.deploy.screen import COLUMNS, ScreenConfig, screen
from tbx.engine.schedule import load_train_config
from tbx.engine.trainer import build_from_config as build_model

PHI = {"PatientName": "Doe^Jane", "PatientID": "PID-7731", "InstitutionName": "St Example Hospital"}
SIZE = 64  # the tiny preset at 64 px: seconds per test on 2 CPU cores


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """An untrained tiny SymFormer run (stage-2 checkpoint) with operating points."""
    torch.manual_seed(0)
    run = save_untrained_run(tmp_path_factory.mktemp("run"), [f"model.input_size={SIZE}"])
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(30), np.ones(30), np.full(20, 2)].astype(int)
    p = rng.dirichlet([1, 1, 1], len(y))
    p[y == 2, 2] += 0.3
    save_operating_points(run, screening_thresholds(p / p.sum(1, keepdims=True), y), written_by="test")
    return run


def _sample_files(shared: Path) -> list[Path]:
    samples = shared / "cxr-samples"
    return sorted(samples.glob("*.png"))[:4] + sorted(samples.glob("*.jpg"))[:2]


@pytest.fixture(scope="module")
def inputs(shared_data, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Real PNG/JPEG CXRs, a MONOCHROME1 16-bit DICOM (no extension) of one of them with PHI in
    its header, a 16-bit RGB-free DICOM under a patient-named folder, and a corrupt file."""
    src = tmp_path_factory.mktemp("inputs")
    files = _sample_files(shared_data)
    for f in files:
        shutil.copy(f, src / f.name)
    # the DICOM twin of a PNG whose pixels span 0..255: stored = (255 − v)·257, MONOCHROME1 →
    # decoded back to exactly v (min..max mapping, then inversion)
    twin = next(
        f for f in files if f.suffix == ".png" and np.ptp(np.asarray(Image.open(f).convert("L"))) == 255
    )
    v = np.asarray(Image.open(twin).convert("L")).astype(np.uint16)
    (src / "dicom").mkdir()
    write_dicom(
        src / "dicom" / "IMG0001", (255 - v) * 257, bits_stored=16, photometric="MONOCHROME1", phi=PHI
    )
    (src / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    return src, {"twin": src / twin.name, "dicom": src / "dicom" / "IMG0001", "corrupt": src / "corrupt.png"}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _all_text(folder: Path) -> str:
    """Every byte of every file below ``folder`` (decoded leniently) and every file name."""
    parts = []
    for p in sorted(folder.rglob("*")):
        parts.append(p.name)
        if p.is_file():
            parts.append(p.read_bytes().decode("latin-1"))
    return "\n".join(parts)


def test_screen_folder_end_to_end(run_dir, inputs, tmp_path):
    src, named = inputs
    out = tmp_path / "screen"
    res = screen(run_dir, [src], out, ScreenConfig(workers=2, batch_size=4))
    rows = _read_csv(out / "predictions.csv")
    assert list(rows[0]) == COLUMNS
    assert len(rows) == res.n_screened == 7  # 4 PNG + 2 JPEG + 1 DICOM; the corrupt file is not a row
    errors = _read_csv(out / "errors.csv")
    assert [e["source"] for e in errors] == [str(named["corrupt"])] and errors[0]["reason"]
    # input order = the sorted walk of the folder (files of src first, then dicom/)
    assert [r["source"] for r in rows] == [s for s in expand_inputs([src]) if s != str(named["corrupt"])]
    thr = float(rows[0]["threshold"])
    points = load_operating_points(run_dir)
    assert thr == pytest.approx(points["sens90"]["threshold"], abs=1e-6)  # default: sens90
    for r in rows:
        p = np.array([float(r[k]) for k in ("p_healthy", "p_sick", "p_tb")])
        assert p.min() >= 0 and abs(p.sum() - 1) < 1e-5
        assert r["decision"] == ("TB" if p[2] >= thr else "non-TB")
    # the DICOM decodes to exactly the PNG's pixels → the same probabilities
    by_src = {r["source"]: r for r in rows}
    d, t = by_src[str(named["dicom"])], by_src[str(named["twin"])]
    assert (d["width"], d["height"]) == (t["width"], t["height"])
    assert [d[k] for k in ("p_healthy", "p_sick", "p_tb")] == [t[k] for k in ("p_healthy", "p_sick", "p_tb")]
    # detections: boxes only on images decided TB, inside the original frame
    dets = json.loads((out / "detections.json").read_text())
    assert [x["id"] for x in dets] == [r["id"] for r in rows]
    for x, r in zip(dets, rows, strict=True):
        assert len(x["boxes"]) == int(r["n_boxes"])
        if r["decision"] != "TB":
            assert x["boxes"] == []
        for b in x["boxes"]:
            bx, by, bw, bh = b["bbox"]
            assert 0 <= bx and 0 <= by and bx + bw <= x["width"] + 1e-3 and by + bh <= x["height"] + 1e-3
            assert b["category"] in ("active", "latent")
    # overlays: valid PNGs, one per row, downscaled
    for r in rows:
        with Image.open(out / "overlays" / f"{r['id']}.png") as im:
            im.verify()
        with Image.open(out / "overlays" / f"{r['id']}.png") as im:
            assert max(im.size) <= 512 and im.mode == "RGB"
    # no DICOM header value anywhere in the outputs or their names
    text = _all_text(out)
    for value in ("Doe", "Jane", "PID-7731", "St Example Hospital"):
        assert value not in text
    man = json.loads((out / "manifest.json").read_text())
    assert man["threshold"]["name"] == "sens90" and man["counts"]["errors"] == 1
    assert json.loads((out / ".tbx-output.json").read_text())["kind"] == "screen"


def test_resume_skips_done_sources_and_all_boxes(run_dir, inputs, tmp_path):
    src, named = inputs
    out = tmp_path / "screen"
    first = sorted(str(p) for p in src.glob("da_*.png"))[:2]
    a = screen(run_dir, first, out, ScreenConfig(workers=0, threshold="0.0", all_boxes=True))
    assert (a.n_screened, a.n_resumed) == (2, 0)
    before = _read_csv(out / "predictions.csv")
    b = screen(run_dir, [src], out, ScreenConfig(workers=0, threshold="0.0", all_boxes=True))
    assert (b.n_screened, b.n_resumed, b.n_new, b.n_errors) == (7, 2, 5, 1)
    after = _read_csv(out / "predictions.csv")
    assert [r for r in after if r["source"] in first] == before
    assert all(r["decision"] == "TB" for r in after)  # threshold 0: everything is TB


def test_anonymize_hashes_sources_and_writes_mapping_outside(run_dir, inputs, tmp_path, cli):
    src, named = inputs
    out, mapping = tmp_path / "anon", tmp_path / "private" / "map.csv"
    code, stdout, _ = cli(
        "screen",
        run_dir,
        src,
        "--out",
        out,
        "--anonymize",
        "--salt",
        "s3cret",
        "--mapping",
        mapping,
        "--workers",
        "0",
        "--threshold",
        "argmax",
    )
    assert code == 0, stdout
    rows = _read_csv(out / "predictions.csv")
    assert all(
        r["source"].startswith("S") and len(r["source"]) == 17 and r["id"] == r["source"] for r in rows
    )
    assert all(r["threshold"] == "argmax" for r in rows)
    for r in rows:
        p = [float(r[k]) for k in ("p_healthy", "p_sick", "p_tb")]
        assert r["decision"] == ("TB" if int(np.argmax(p)) == 2 else "non-TB")
    text = _all_text(out)
    assert str(src) not in text and "IMG0001" not in text and "s3cret" not in text and "da_" not in text
    table = dict(csv.reader(mapping.open()))
    assert table.pop("source") == "hash" and set(table.values()) >= {r["source"] for r in rows}
    code, _, err = cli(
        "screen",
        run_dir,
        src,
        "--out",
        tmp_path / "a2",
        "--anonymize",
        "--mapping",
        tmp_path / "a2" / "m.csv",
    )
    assert code == 2 and "outside" in err


def test_nothing_readable_exits_2_with_errors_csv(run_dir, inputs, tmp_path, cli):
    _, named = inputs
    out = tmp_path / "bad"
    code, _, err = cli(
        "screen", run_dir, named["corrupt"], tmp_path / "missing.dcm", "--out", out, "--workers", "0"
    )
    assert code == 2 and "no input could be read" in err
    assert len(_read_csv(out / "errors.csv")) == 2
    code, _, err = cli("screen", run_dir, named["twin"], "--out", tmp_path / "x", "--threshold", "spec80")
    assert code == 2 and "threshold" in err


def _box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    same = np.abs(a[:, None, :] - b[None, :, :]).max(-1) <= 1e-3  # also for boxes clipped to zero area
    return np.where(same, 1.0, inter / np.where(union > 0, union, 1.0))


@pytest.fixture(scope="module")
def onnx_file(run_dir, tmp_path_factory) -> Path:
    from tbx.deploy.export import export_onnx

    return export_onnx(run_dir, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def test_onnx_parity_with_torch(run_dir, onnx_file, inputs):
    """Same images (one padded: a non-square crop) through both backends: probabilities within 1e-4,
    every box matched at IoU ≥ 0.99."""
    from tbx.deploy.inputs import decode_for_network

    src, named = inputs
    files = [named["twin"], *sorted(src.glob("*.jpg"))]
    items = [decode_for_network(Path(f).read_bytes(), str(f), SIZE) for f in files]
    crop = np.asarray(Image.open(named["twin"]).convert("L"))[:, :300]  # 512 × 300: padded at the right
    import io

    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, "PNG")
    items.append(decode_for_network(buf.getvalue(), "crop.png", SIZE))
    images = torch.stack([it[0] for it in items])
    sizes = [it[1] for it in items]
    assert sizes[-1] != (SIZE, SIZE)
    tb = load_backend(run_dir, device="cpu")
    ob = load_backend(onnx_file)
    assert (tb.name, ob.name) == ("torch", "onnxruntime") and ob.input_size == SIZE
    assert ob.operating_points == tb.operating_points
    # many boxes: lower the score threshold of both decoders alike
    for b in (tb, ob):
        b.model.score_thresh = 0.0
    pt, po = tb.run(images, sizes), ob.run(images, sizes)
    n_boxes = 0
    for a, b in zip(pt, po, strict=True):
        assert (a.probs.double() - b.probs.double()).abs().max() <= 1e-4
        assert len(a.boxes) == len(b.boxes) > 0
        iou = _box_iou(a.boxes.numpy().astype(np.float64), b.boxes.numpy().astype(np.float64))
        assert (iou.max(1) >= 0.99).all() and (iou.max(0) >= 0.99).all()
        n_boxes += len(a.boxes)
    assert n_boxes >= 4 * 50


@pytest.mark.slow
def test_screen_with_onnx_matches_torch_csv(run_dir, onnx_file, inputs, tmp_path):
    src, _ = inputs
    a = screen(run_dir, [src], tmp_path / "t", ScreenConfig(workers=0, overlays=False))
    b = screen(onnx_file, [src], tmp_path / "o", ScreenConfig(workers=0, overlays=False))
    assert b.backend == "onnxruntime" and b.threshold.value == a.threshold.value
    ra, rb = _read_csv(tmp_path / "t" / "predictions.csv"), _read_csv(tmp_path / "o" / "predictions.csv")
    assert [r["source"] for r in ra] == [r["source"] for r in rb]
    for x, y in zip(ra, rb, strict=True):
        assert abs(float(x["p_tb"]) - float(y["p_tb"])) <= 1e-4 and x["decision"] == y["decision"]


def test_onnx_parity_with_a_downscaled_classification_input(tmp_path):
    """The tiny preset as trained (detector 160 px, classification ResNet 112 px): the exported
    graph's MatMul resize gives the probabilities of the eager antialiased resize."""
    from tbx.deploy.export import export_onnx

    torch.manual_seed(0)
    assert load_train_config("symformer_retinanet", "tiny", []).model.retinanet.cls_input_size == 112
    onnx = export_onnx(save_untrained_run(tmp_path / "run", ["model.input_size=160"]), tmp_path / "m.onnx")
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 160, 160), generator=g, dtype=torch.uint8)
    sizes = [(160, 160), (160, 96), (128, 160)]
    before = images.clone()
    pt = load_backend(tmp_path / "run", device="cpu").run(images, sizes)
    po = load_backend(onnx).run(images, sizes)
    assert torch.equal(images, before)
    for a, b in zip(pt, po, strict=True):
        assert (a.probs.double() - b.probs.double()).abs().max() <= 1e-4


def test_export_refuses_models_without_a_split(tmp_path, cli):
    from tbx.deploy.backends import NOT_EXPORTABLE, check_exportable
    from tbx.errors import TbxError

    cfg = load_train_config("symformer_retinanet", "tiny", ["model.input_size=160"])
    check_exportable(cfg, build_model(cfg))  # the tiny preset itself: cls_input_size 112 < 160
    cfg.model_name = "fcos"
    with pytest.raises(TbxError, match="NMS inside"):
        check_exportable(cfg, torch.nn.Identity())
    assert set(NOT_EXPORTABLE) >= {"faster_rcnn", "fcos", "ssd"}
    code, _, err = cli("export", tmp_path, "--out", tmp_path / "m.onnx", "--opset", "13")
    assert code == 2 and "GridSample" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _screen_worker(rank: int, world: int, port: int, run: str, src: str, out: str) -> None:
    import os

    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    screen(run, [src], out, ScreenConfig(workers=0, batch_size=2, device="cpu"))


@pytest.mark.slow
def test_two_gloo_ranks_write_the_csv_of_one_process(run_dir, inputs, tmp_path):
    src, _ = inputs
    screen(run_dir, [src], tmp_path / "one", ScreenConfig(workers=0, batch_size=2, device="cpu"))
    mp.start_processes(
        _screen_worker,
        args=(2, _free_port(), str(run_dir), str(src), str(tmp_path / "two")),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    assert (tmp_path / "one" / "errors.csv").read_text() == (tmp_path / "two" / "errors.csv").read_text()
    one = _read_csv(tmp_path / "one" / "predictions.csv")
    two = _read_csv(tmp_path / "two" / "predictions.csv")
    assert len(one) == len(two) == 7
    for a, b in zip(one, two, strict=True):  # batch partners differ: last-digit rounding only
        same = [k for k in COLUMNS if not k.startswith("p_")]
        assert [a[k] for k in same] == [b[k] for k in same]
        assert all(abs(float(a[k]) - float(b[k])) <= 2e-6 for k in ("p_healthy", "p_sick", "p_tb"))
    parts = sorted(p.name for p in (tmp_path / "two" / ".parts").glob("pred-*"))
    assert any("-r0-" in p for p in parts) and any("-r1-" in p for p in parts)  # both ranks screened
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["world_size"] == 2


def test_named_operating_points_match_brute_force():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    p = rng.dirichlet([1, 1, 1], 300)
    p[y == 2, 2] += rng.uniform(0, 0.5, (y == 2).sum())
    p /= p.sum(1, keepdims=True)
    pts = screening_thresholds(p, y)
    tb = y == 2
    best_spec, best_sens = (-1, None), (-1, None)
    for t in np.unique(p[:, 2]):
        sens, spec = (p[tb, 2] >= t).mean(), (p[~tb, 2] < t).mean()
        if sens >= 0.9 and spec > best_spec[0]:
            best_spec = (spec, t)
        if spec >= 0.7 and sens > best_sens[0]:
            best_sens = (sens, t)
    assert pts["sens90"]["threshold"] == pytest.approx(best_spec[1])
    assert pts["sens90"]["specificity"] == pytest.approx(best_spec[0])
    assert pts["spec70"]["threshold"] == pytest.approx(best_sens[1])
    am = p.argmax(1) == 2
    assert pts["argmax"]["sensitivity"] == pytest.approx(am[tb].mean())
    assert pts["argmax"]["specificity"] == pytest.approx((~am[~tb]).mean())


def test_bench_and_train_hooks_write_operating_points(run_dir, tmp_path, cli):
    from engine_fixtures import make_layout

    from tbx.bench.results_io import write_cls_result
    from tbx.data.coco import read_coco
    from tbx.data.records import CLASS_INDEX
    from tbx.deploy.operating_points import fit_operating_points

    root = make_layout(tmp_path / "data", n_tb=6, n_healthy=5, n_sick=5, size=64)
    ann = root / "annotations" / "json" / "all_trainval.json"
    y = np.array([CLASS_INDEX[r.label] for r in read_coco(ann)])
    rng = np.random.default_rng(1)
    probs = rng.dirichlet([1, 1, 1], len(y))
    (tmp_path / "pred").mkdir()
    write_cls_result(tmp_path / "pred" / "cls_result.txt", probs)
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "operating_points.json").unlink()
    code, out, err = cli("bench", "--gt", ann, "--pred", tmp_path / "pred", "--save-operating-points", run)
    assert code == 0, err
    got = load_operating_points(run)
    want = screening_thresholds(np.round(probs, 6), y)  # cls_result.txt keeps 8 significant digits
    for name in ("sens90", "spec70"):
        assert got[name]["threshold"] == pytest.approx(want[name]["threshold"], abs=1e-6)
    # tbx train --val: the run's final checkpoint on the validation file
    path = fit_operating_points(run, root, ann, device="cpu", workers=0)
    data = json.loads(path.read_text())
    assert data["source"]["n_images"] == len(y) and data["source"]["written_by"] == "tbx train --val"
    assert set(data["points"]) == {"sens90", "spec70", "argmax"}


def test_exportable_rewrites_equal_the_eager_ops():
    """What the ONNX graph runs instead of the eager ops gives the same values."""
    import torch.nn.functional as F

    from tbx.models.resize import resize_as_matmul
    from tbx.models.retinanet import RetinaNet
    from tbx.models.spe import adaptive_max_pool_gather, affine_grid_matmul

    g = torch.Generator().manual_seed(0)
    # the classification branch's antialiased downscale (tiny: 160 → 112) as two MatMuls
    for h, w, scale in [
        (160, 160, 0.7),
        (160, 128, 0.7),
        (512, 512, 112 / 512),
        (33, 47, 0.5),
        (64, 64, 1.5),
    ]:
        x = torch.randn(2, 3, h, w, generator=g)
        ref = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(resize_as_matmul(x, scale), ref, atol=1e-6, rtol=0)
    for h, w in [(4, 4), (12, 7), (16, 16), (3, 9), (64, 40)]:
        x = torch.randn(2, 5, h, w, generator=g)
        assert torch.equal(adaptive_max_pool_gather(x, 8), F.adaptive_max_pool2d(x, 8))
        theta = torch.randn(2, 2, 3, generator=g)
        ref = F.affine_grid(theta, [2, 5, h, w], align_corners=False)
        torch.testing.assert_close(affine_grid_matmul(theta, h, w), ref, atol=1e-6, rtol=0)
    # padding masks from a size tensor = from a size list; P3..P7 sizes by formula = the real ones
    feats = [torch.zeros(3, 1, s, s2) for s, s2 in RetinaNet.feature_sizes(96, 160)]
    images = torch.zeros(3, 3, 96, 160)
    sizes = [(96, 160), (50, 160), (96, 33)]
    a = RetinaNet._level_masks(images, sizes, feats)
    b = RetinaNet._level_masks(images, torch.tensor(sizes), feats)
    for m1, m2, (fh, _) in zip(a, b, RetinaNet.feature_sizes(96, 160), strict=True):
        assert torch.equal(m1, m2) and not m1[0].any()
        assert m1[1, : -(-50 * fh // 96)].logical_not().all() and m1[1, -(-50 * fh // 96) :].all()
    cfg = load_train_config("symformer_retinanet", "tiny", ["model.input_size=96"])
    model = build_model(cfg).eval()
    with torch.no_grad():
        _, real = model._features(torch.zeros(1, 3, 96, 160), [(96, 160)], cls=False)
    assert [tuple(f.shape[-2:]) for f in real] == RetinaNet.feature_sizes(96, 160)


def test_heatmaps_beside_the_overlays(run_dir, onnx_file, inputs, tmp_path, cli):
    """`--heatmaps`: one heatmaps/<id>.png per screened image (tbx explain's Grad-CAM on the predicted
    class); an ONNX model or an unknown method is refused in one line before any output exists."""
    from PIL import Image

    src, _ = inputs
    files = sorted(src.glob("da_*.png"))[:2]
    out = tmp_path / "heat"
    code, stdout, err = cli("screen", run_dir, *files, "--out", out, "--workers", "0", "--heatmaps")
    assert code == 0, err
    rows = _read_csv(out / "predictions.csv")
    assert len(rows) == 2
    heat = sorted(p.name for p in (out / "heatmaps").iterdir())
    assert heat == sorted(f"{r['id']}.png" for r in rows)
    for name in heat:
        im = Image.open(out / "heatmaps" / name)
        im.load()
        overlay = Image.open(out / "overlays" / name)
        assert im.mode == "RGB" and min(im.size) > 100 and im.size != overlay.size
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["heatmaps"] == "heatmaps/"
    for model, extra, want in (
        (onnx_file, [], "ONNX"),
        (run_dir, ["--heatmap-method", "nope"], "unknown explain"),
    ):
        bad = tmp_path / f"bad-{want.split()[0]}"
        code, _, err = cli("screen", model, files[0], "--out", bad, "--workers", "0", "--heatmaps", *extra)
        assert code == 2 and want in err and len(err.strip().splitlines()) == 1, err
        assert not bad.exists()
