"""`tbx dataset synth`: composition, boxes, determinism, lesion laterality, raw PNG/DICOM exports.

Expected values are computed from the written files with the standard library / Pillow / pydicom,
never from the generator's own return values.
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tbx.data.synth import SynthConfig, plan_cases, render, synthesize

CAT_NAMES = {"ActiveTuberculosis": 1, "ObsoletePulmonaryTuberculosis": 2, "PulmonaryTuberculosis": 3}


def xml_boxes(path: Path) -> tuple[int, int, list[tuple[int, int, int, int, int]]]:
    root = ET.parse(path).getroot()
    w, h = int(root.find("size/width").text), int(root.find("size/height").text)
    out = []
    for obj in root.findall("object"):
        bb = obj.find("bndbox")
        out.append(
            (
                *(int(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax")),
                CAT_NAMES[obj.find("name").text],
            )
        )
    return w, h, out


def type_of(cats: set[int]) -> str:
    if 3 in cats:
        return "uncertain"
    return {frozenset({1}): "active", frozenset({2}): "latent", frozenset({1, 2}): "active+latent"}.get(
        frozenset(cats), "unknown"
    )


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "provenance.json"
    }


# ---------------------------------------------------------------------------------------------
# layout


def test_layout_composition_and_boxes(synth_root: Path):
    # conftest: 12 healthy, 12 sick, 12 active, 6 latent, 4 both, 2 uncertain at 256 px
    imgs = synth_root / "imgs"
    assert sorted(p.name for p in (imgs / "health").iterdir()) == [f"h{i:04d}.png" for i in range(1, 13)]
    assert sorted(p.name for p in (imgs / "sick").iterdir()) == [f"s{i:04d}.png" for i in range(1, 13)]
    tb = sorted((imgs / "tb").iterdir())
    assert [p.name for p in tb] == [f"tb{i:04d}.png" for i in range(1, 25)]
    for p in [*tb, imgs / "health" / "h0001.png", imgs / "sick" / "s0012.png"]:
        with Image.open(p) as im:
            assert im.mode == "L" and im.size == (256, 256)
    xmls = sorted((synth_root / "annotations" / "xml").iterdir())
    assert [p.stem for p in xmls] == [p.stem for p in tb]  # XML for every TB image, only TB
    types = Counter()
    json_boxes = {}
    for split in ("train", "val", "test"):
        data = json.loads((synth_root / "annotations/json" / f"TBX11K_{split}.json").read_text())
        names = {im["id"]: im["file_name"] for im in data["images"]}
        for a in data["annotations"]:
            json_boxes.setdefault(names[a["image_id"]], []).append((a["category_id"], a["bbox"]))
    for p in xmls:
        w, h, boxes = xml_boxes(p)
        assert (w, h) == (256, 256)
        assert boxes, p
        for xmin, ymin, xmax, ymax, _ in boxes:
            assert 1 <= xmin < xmax <= 256 and 1 <= ymin < ymax <= 256
        types[type_of({b[4] for b in boxes})] += 1
        # official conversion (docs/dataset.md §1.3): scale (×1 here), subtract 1 → the JSON boxes
        expect = sorted((c, [x0 - 1, y0 - 1, x1 - x0, y1 - y0]) for x0, y0, x1, y1, c in boxes)
        got = sorted((c, [round(v, 6) for v in b]) for c, b in json_boxes[f"tb/{p.stem}.png"])
        assert got == expect
    assert types == {"active": 12, "latent": 6, "active+latent": 4, "uncertain": 2}


def test_layout_lists_and_patients(synth_root: Path):
    listed = []
    for split in ("train", "val", "test"):
        listed += (synth_root / "lists" / f"TBX11K_{split}.txt").read_text().split()
    on_disk = sorted(str(p.relative_to(synth_root / "imgs")) for p in (synth_root / "imgs").rglob("*.png"))
    assert sorted(listed) == on_disk  # every image in exactly one split
    assert (synth_root / "provenance.json").is_file()


def _multi(cfg: SynthConfig, n: int):
    """Boxes of the first ``n`` TB cases with ≥ 2 boxes, and the image width."""
    out = []
    for case in plan_cases(cfg):
        if case.label != "tb":
            continue
        img, boxes = render(case, cfg)
        if len(boxes) >= 2:
            out.append(boxes)
        if len(out) == n:
            break
    return out, cfg.size


def _sides(boxes, width) -> set[bool]:
    return {b.x + b.w / 2 < width / 2 for b in boxes}


def test_lesion_laterality_controlled():
    base = dict(n_healthy=0, n_sick=0, n_active=30, n_latent=10, n_both=10, n_uncertain=0, size=128)
    one, w = _multi(SynthConfig(**base, unilateral=1.0), 12)
    assert len(one) >= 8 and all(len(_sides(b, w)) == 1 for b in one)
    two, w = _multi(SynthConfig(**base, unilateral=0.0), 12)
    assert len(two) >= 8 and all(len(_sides(b, w)) == 2 for b in two)


def test_default_unilateral_share_and_sizes():
    cfg = SynthConfig(
        n_healthy=0, n_sick=0, n_active=40, n_latent=20, n_both=20, n_uncertain=0, size=256, seed=5
    )
    multi, sizes = [], {1: [], 2: []}
    for case in plan_cases(cfg):
        img, boxes = render(case, cfg)
        if len(boxes) >= 2:
            multi.append(len(_sides(boxes, 256)) == 1)
        for b in boxes:
            sizes[b.category].append(np.sqrt((b.w + 1) * (b.h + 1)) * 512 / 256)  # in the 512 frame
    share = float(np.mean(multi))
    assert 0.7 <= share <= 0.97, share  # 85 % of TB images unilateral
    # calibrated on the real release (TBX11K_train.json, 724 active / 178 latent boxes, √area
    # at 512: median 124 / 108, 5–95 % 54–195 / 45–173): ±25 % on the medians
    assert 93 <= np.median(sizes[1]) <= 155 and 81 <= np.median(sizes[2]) <= 135, (
        np.median(sizes[1]),
        np.median(sizes[2]),
    )
    assert np.percentile(sizes[1], 5) >= 35 and np.percentile(sizes[1], 95) <= 260


def test_box_sizes_follow_the_real_release(shared_data: Path):
    """The constants above, recomputed from the official TBX11K_train.json (√(w·h) at 512)."""
    data = json.loads((shared_data / "tbx11k-meta" / "TBX11K_train.json").read_text())
    for cat, median in ((1, 124.4), (2, 108.3)):
        s = [np.sqrt(a["bbox"][2] * a["bbox"][3]) for a in data["annotations"] if a["category_id"] == cat]
        assert np.median(s) == pytest.approx(median, abs=0.1)


def test_lesion_contrast_and_tight_boxes():
    """Render each TB image with and without its lesions: the difference is the lesion itself."""
    cfg = SynthConfig(
        n_healthy=0, n_sick=0, n_active=8, n_latent=6, n_both=2, n_uncertain=2, size=256, seed=7
    )
    peaks, mirror_clean = [], []
    for case in plan_cases(cfg):
        img, boxes = render(case, cfg)
        bare, boxes2 = render(case, cfg, lesions=False)
        assert boxes == boxes2 and boxes
        diff = np.abs(img - bare)
        inside = np.zeros(img.shape, bool)
        for b in boxes:
            inside[int(b.y) : int(b.y + b.h) + 1, int(b.x) : int(b.x + b.w) + 1] = True
            patch = diff[int(b.y) : int(b.y + b.h) + 1, int(b.x) : int(b.x + b.w) + 1]
            overlapped = any(
                o is not b and o.x <= b.x + b.w and b.x <= o.x + o.w and o.y <= b.y + b.h and b.y <= o.y + o.h
                for o in boxes
            )
            # tight: the lesion still shows on every edge row/column of its box (a box that
            # touches another lesion's box may have its peak from that lesion: not checked)
            assert (
                overlapped
                or min(patch[0].max(), patch[-1].max(), patch[:, 0].max(), patch[:, -1].max())
                > 0.1 * patch.max()
            )
        if len({b.x + b.w / 2 < 128 for b in boxes}) == 1:  # unilateral: the mirror is lesion-free,
            for b in boxes:  # so comparing a region with its mirror isolates the lesion
                x0, x1 = int(b.x), int(b.x + b.w) + 1
                mirror = diff[int(b.y) : int(b.y + b.h) + 1, 256 - x1 : 256 - x0]
                mirror_clean.append(mirror.max() < 0.1 * diff.max())
        # the boxes hold the lesions: only faint tails outside (quantum noise is identical, same RNG
        # stream), most of the lesion's signal inside
        assert diff[~inside].max() < 0.5 * diff[inside].max()
        assert diff[inside].sum() >= 0.6 * diff.sum()
        lung_range = np.percentile(bare, 95) - np.percentile(bare, 5)
        peaks.append(np.percentile(diff[inside], 99) / lung_range)
    # subtle but visible: of the order of 8–20 % of the intensity range, never saturated
    assert 0.06 <= np.median(peaks) <= 0.3 and max(peaks) < 0.5, peaks
    assert len(mirror_clean) >= 10 and np.mean(mirror_clean) >= 0.9


def test_class_intensity_patterns():
    """Sick findings (diffuse/lower-zone opacities, effusion, large heart) raise the lung density
    bilaterally or basally; healthy lungs stay dark — the classes are separable."""
    cfg = SynthConfig(n_healthy=12, n_sick=12, n_active=0, n_latent=0, n_both=0, n_uncertain=0, size=128)
    lower = {"healthy": [], "sick": []}
    for case in plan_cases(cfg):
        img, _ = render(case, cfg)
        lower[case.label].append(np.percentile(img[64:100, 16:112], 25))
    assert np.median(lower["sick"]) > np.median(lower["healthy"])


def test_determinism_and_workers(tmp_path: Path):
    cfg = dict(
        n_healthy=2, n_sick=2, n_active=2, n_latent=1, n_both=1, n_uncertain=1, n_tb_no_box=1, size=128
    )
    synthesize(tmp_path / "a", SynthConfig(**cfg, seed=3))
    synthesize(tmp_path / "b", SynthConfig(**cfg, seed=3, workers=2))
    synthesize(tmp_path / "c", SynthConfig(**cfg, seed=4))
    a, b, c = (tree_bytes(tmp_path / k) for k in "abc")
    assert a == b  # byte-identical, independent of the number of workers
    pngs = [k for k in a if k.endswith(".png")]
    assert len(pngs) == 10
    # the tb1199 quirk: one TB image whose XML has no object, absent from the *_only_tb views
    empty = [p for p in (tmp_path / "a/annotations/xml").iterdir() if not xml_boxes(p)[2]]
    assert len(empty) == 1
    only_tb = []
    for split in ("train", "val", "test"):
        f = tmp_path / "a/annotations/json" / f"TBX11K_{split}_only_tb.json"
        if f.is_file():
            only_tb += [im["file_name"] for im in json.loads(f.read_text())["images"]]
    assert len(only_tb) == 5 and f"tb/{empty[0].stem}.png" not in only_tb
    assert sum(a[k] != c.get(k) for k in pngs) == len(pngs)  # another seed → other images


def test_refuses_existing_output(tmp_path: Path, cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = cli(
        "dataset",
        "synth",
        out,
        "--n-healthy",
        "1",
        "--n-sick",
        "0",
        "--n-active",
        "0",
        "--n-latent",
        "0",
        "--n-both",
        "0",
        "--n-uncertain",
        "0",
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "--force" in err
    assert (out / "keep.txt").read_text() == "x"
    small = [
        "--size",
        "96",
        "--n-healthy",
        "1",
        "--n-sick",
        "1",
        "--n-active",
        "1",
        "--n-latent",
        "0",
        "--n-both",
        "0",
        "--n-uncertain",
        "0",
    ]
    # --force replaces only tbx's own output, never a folder of the user's files
    code, _, err = cli("dataset", "synth", out, "--force", *small)
    assert code == 2 and "not created by tbx" in err and (out / "keep.txt").read_text() == "x"
    mine = tmp_path / "mine"
    assert cli("dataset", "synth", mine, *small)[0] == 0
    code, out_text, _ = cli("dataset", "synth", mine, "--force", "--seed", "1", *small)
    assert code == 0 and "3 images" in out_text
    assert (mine / "imgs/tb/tb0001.png").is_file() and (mine / ".tbx-output.json").is_file()
    code, _, err = cli("dataset", "synth", tmp_path / "x", "--dicom")
    assert code == 2 and "--raw" in err
    code, _, err = cli("dataset", "synth", tmp_path / "y", "--n-sick", "-1")
    assert code == 2 and "--n-sick" in err


# ---------------------------------------------------------------------------------------------
# raw exports

RAW = dict(
    n_healthy=3,
    n_sick=3,
    n_active=2,
    n_latent=1,
    n_both=1,
    n_uncertain=1,
    size=96,
    raw_width=(240, 420),
    raw=True,
    seed=2,
)


def _manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["file", "patient_id", "label", "tb_type", "source"]
        return list(reader)


def _check_export(root: Path) -> list[dict[str, str]]:
    rows = _manifest(root)
    assert Counter(r["label"] for r in rows) == {"healthy": 3, "sick": 3, "tb": 5}
    assert Counter(r["tb_type"] for r in rows if r["label"] == "tb") == {
        "active": 2,
        "latent": 1,
        "active+latent": 1,
        "uncertain": 1,
    }
    assert {r["source"] for r in rows} == {"tbx11k"}
    for r in rows:
        assert re.fullmatch(r"exports/20\d\d/CXR_\d{6}\.(png|dcm)", r["file"])
        assert re.fullmatch(r"P\d{7}", r["patient_id"])
    per_patient = Counter(r["patient_id"] for r in rows)
    assert sorted(per_patient.values()).count(2) == 2  # two repeat patients
    xml_dir = root / "xml"
    assert sorted(p.stem for p in xml_dir.iterdir()) == sorted(
        Path(r["file"]).stem for r in rows if r["label"] == "tb"
    )
    return rows


def test_raw_png_export(tmp_path: Path):
    root = tmp_path / "export"
    synthesize(root, SynthConfig(**RAW))
    rows = _check_export(root)
    sizes = set()
    for r in rows:
        with Image.open(root / r["file"]) as im:
            w, h = im.size
            assert im.mode == "L"
        assert 240 <= w <= 420 and 0.79 <= h / w <= 1.26
        sizes.add((w, h))
        if r["label"] == "tb":
            xw, xh, boxes = xml_boxes(root / "xml" / f"{Path(r['file']).stem}.xml")
            assert (xw, xh) == (w, h)  # boxes at the original resolution
            assert type_of({b[4] for b in boxes}) == r["tb_type"]
            for xmin, ymin, xmax, ymax, _ in boxes:
                assert 1 <= xmin < xmax <= w and 1 <= ymin < ymax <= h
    assert len(sizes) == len(rows)  # sizes and aspects vary


def test_raw_dicom_export(tmp_path: Path):
    pydicom = pytest.importorskip("pydicom")
    root = tmp_path / "export"
    synthesize(root, SynthConfig(**RAW, dicom=True))
    rows = _check_export(root)
    photometric, bits = Counter(), Counter()
    for r in rows:
        ds = pydicom.dcmread(root / r["file"])
        photometric[ds.PhotometricInterpretation] += 1
        bits[int(ds.BitsStored)] += 1
        assert ds.BitsAllocated == 16 and ds.HighBit == ds.BitsStored - 1
        assert "WindowCenter" in ds and "WindowWidth" in ds
        arr = ds.pixel_array.astype(np.int64)
        assert arr.shape == (ds.Rows, ds.Columns) and arr.max() < 2**ds.BitsStored
        # fake PHI is present (the build must strip it)
        assert re.fullmatch(r"[A-Z]+\^[A-Z]+", str(ds.PatientName))
        assert ds.PatientID == r["patient_id"]
        assert re.fullmatch(r"(19|20)\d{6}", ds.PatientBirthDate)
        assert ds.InstitutionName and ds.AccessionNumber and re.fullmatch(r"20\d{6}", ds.StudyDate)
        # MONOCHROME1 stores low values as white: the air outside the body (black on display)
        # then has high stored values
        corner = np.concatenate([arr[:5, :5].ravel(), arr[:5, -5:].ravel()]).mean()
        if ds.PhotometricInterpretation == "MONOCHROME1":
            assert corner > np.median(arr)
        else:
            assert corner < np.median(arr)
    assert set(photometric) == {"MONOCHROME1", "MONOCHROME2"}
    assert set(bits) <= {12, 14, 16} and len(bits) >= 2
    # same seed → byte-identical DICOM (fixed UIDs)
    synthesize(tmp_path / "again", SynthConfig(**RAW, dicom=True))
    assert tree_bytes(root) == tree_bytes(tmp_path / "again")
