"""`tbx dataset build`: official round trip, raw exports (PNG/DICOM), privacy, bad inputs, resume,
duplicates.  Reference values come from the published JSON or are computed in the test."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_dicom import PHI, write_dicom

from tbx.data.build import BuildConfig, build_dataset, patient_hash
from tbx.data.coco import read_coco
from tbx.data.validate import validate_dataset
from tbx.data.voc import convert_voc_box, read_voc

SIZE = 64  # output side in most tests (speed); the conversion rule is tested at 512


# ----------------------------------------------------------------------------------------------
# fixtures: a tiny raw export written with PIL / pydicom


def _image(seed: int, w: int = 96, h: int = 80) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 60 + 120 * np.sin(xx / (7 + seed % 5)) ** 2 + 40 * (yy / h)
    return np.clip(base + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8)


def _xml(
    path: Path,
    filename: str,
    w: int,
    h: int,
    objects: list[tuple[str, int, int, int, int]],
    difficult: tuple[int, ...] = (),
) -> None:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(i in difficult)}</difficult><bndbox><xmin>{a}</xmin>"
        f"<ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for i, (n, a, b, c, d) in enumerate(objects)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><filename>{filename}</filename><size><width>{w}</width>"
        f"<height>{h}</height></size>{objs}</annotation>"
    )


HEADER = ["file", "patient_id", "label", "tb_type", "source", "split"]


def make_export(root: Path, n: int = 3, split: bool = True) -> list[list[str]]:
    """n healthy, n sick, n TB PNGs (TB with VOC boxes); returns the manifest rows."""
    rows = []
    k = 0
    for label in ("healthy", "sick", "tb"):
        for i in range(n):
            k += 1
            name = f"scans/{label[:2]}_{i}.png"
            (root / "scans").mkdir(parents=True, exist_ok=True)
            Image.fromarray(_image(k)).save(root / name)
            tb_type = "none"
            if label == "tb":
                objs = [("ActiveTuberculosis", 10, 12, 40, 50)]
                tb_type = "active"
                if i == 1:
                    objs.append(("ObsoletePulmonaryTuberculosis", 50, 20, 90, 70))
                    tb_type = "active+latent"
                _xml(root / "xml" / f"tb_{i}.xml", f"tb_{i}.png", 96, 80, objs)
            rows.append(
                [
                    name,
                    f"PAT{k:03d}",
                    label,
                    tb_type,
                    "hospital",
                    ("train", "val", "test")[i % 3] if split else "",
                ]
            )
    write_manifest(root, rows)
    return rows


def write_manifest(root: Path, rows: list[list[str]], header: list[str] = HEADER) -> None:
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def all_bytes(root: Path) -> dict[str, bytes]:
    """Every output file's bytes except the run records (provenance time, reuse counts)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("provenance.json", "build_report.json")
    }


# ----------------------------------------------------------------------------------------------
# the official conversion rule on the real data


def _official(shared_data: Path, name: str) -> dict:
    return json.loads((shared_data / "tbx11k-meta" / name).read_text())


def test_convert_rule_is_bit_exact_on_published_boxes(shared_data):
    off = _official(shared_data, "TBX11K_train.json")
    anns: dict[int, list] = {}
    for a in off["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    n = 0
    for img in off["images"]:
        if not img["file_name"].startswith("tb/"):
            continue
        ann = read_voc(shared_data / "tbx11k-meta" / "xml" / (Path(img["file_name"]).stem + ".xml"))
        conv = [
            convert_voc_box(o.xmin, o.ymin, o.xmax, o.ymax, ann.width, ann.height)
            for o in ann.objects
            if not o.difficult
        ]
        pub = [a["bbox"] for a in anns.get(img["id"], [])]
        assert [list(c) for c in conv if c is not None] == pub  # bit-exact, in XML order
        n += len(pub)
    assert n == 902


def test_convert_rule_drops_thin_boxes():
    assert convert_voc_box(100, 100, 103, 200, 2000, 2000) is None  # 3 px → 0.77 px at 512
    assert convert_voc_box(100, 100, 108, 200, 2000, 2000) is not None


def test_release_root_regenerates_official_jsons(tmp_path, shared_data):
    meta = shared_data / "tbx11k-meta"
    root = tmp_path / "release"
    (root / "lists").mkdir(parents=True)
    for name in ("TBX11K_train", "all_train"):
        files = [i["file_name"] for i in _official(shared_data, f"{name}.json")["images"]]
        (root / "lists" / f"{name}.txt").write_text("".join(f"{f}\n" for f in files))
    shutil.copytree(meta / "xml", root / "annotations" / "xml")
    rep = build_dataset(root, tmp_path / "out", BuildConfig())  # no imgs/ → metadata only
    assert rep.images == "none" and any("tb1199" in w for w in rep.warnings)
    for name in ("TBX11K_train", "TBX11K_train_only_tb", "all_train"):
        off = _official(shared_data, f"{name}.json")
        mine = json.loads((tmp_path / "out" / "annotations" / "json" / f"{name}.json").read_text())
        assert mine["categories"] == off["categories"]
        key = ("id", "file_name", "width", "height")
        assert [[i[k] for k in key] for i in mine["images"]] == [[i[k] for k in key] for i in off["images"]]
        assert len(mine["annotations"]) == len(off["annotations"])
        for a, b in zip(mine["annotations"], off["annotations"]):
            assert (a["id"], a["image_id"], a["category_id"], a["iscrowd"]) == (
                b["id"],
                b["image_id"],
                b["category_id"],
                b["iscrowd"],
            )
            assert max(abs(p - q) for p, q in zip(a["bbox"], b["bbox"])) <= 1e-3
            assert a["area"] == b["area"]  # incl. tb0862's float32 area (59896, not int(w·h) = 59895)
    listed = (tmp_path / "out" / "lists" / "TBX11K_train.txt").read_text().split()
    assert listed == (root / "lists" / "TBX11K_train.txt").read_text().split()


def test_release_root_with_images_links_them(tmp_path, shared_data):
    root = tmp_path / "rel"
    (root / "lists").mkdir(parents=True)
    (root / "lists" / "TBX11K_train.txt").write_text("tb/tb0005.png\nhealth/h0001.png\n")
    (root / "lists" / "TBX11K_val.txt").write_text("sick/s0002.png\n")
    for k, f in enumerate(("tb/tb0005.png", "health/h0001.png", "sick/s0002.png")):
        (root / "imgs" / f).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(k, 512, 512)).save(root / "imgs" / f)  # distinct: no leak between splits
    (root / "annotations" / "xml").mkdir(parents=True)
    shutil.copy(shared_data / "tbx11k-meta" / "xml" / "tb0005.xml", root / "annotations" / "xml")
    build_dataset(root, tmp_path / "out")
    recs = read_coco(tmp_path / "out" / "annotations" / "json" / "TBX11K_train.json")
    off = _official(shared_data, "TBX11K_train.json")["annotations"][0]["bbox"]
    assert [r.file_name for r in recs] == ["tb/tb0005.png", "health/h0001.png"]
    assert [recs[0].boxes[0].x, recs[0].boxes[0].y, recs[0].boxes[0].w, recs[0].boxes[0].h] == off
    assert (tmp_path / "out" / "imgs" / "sick" / "s0002.png").read_bytes() == (
        root / "imgs" / "sick" / "s0002.png"
    ).read_bytes()
    assert validate_dataset(tmp_path / "out").errors == []


# ----------------------------------------------------------------------------------------------
# raw exports


def test_raw_png_build_layout_boxes_and_views(tmp_path):
    src = tmp_path / "src"
    make_export(src)
    rep = build_dataset(src, tmp_path / "out", BuildConfig(size=SIZE, mapping=str(tmp_path / "map.csv")))
    out = tmp_path / "out"
    assert rep.n_images == 9 and rep.counts["by_label"] == {"tb": 3, "healthy": 3, "sick": 3}
    assert not (tmp_path / "out.partial").exists()
    mapping = {r["original"]: r["new"] for r in csv.DictReader(open(tmp_path / "map.csv"))}
    # boxes: scale per axis (96×80 → 64×64) then −1, computed here by hand
    recs = {r.file_name: r for r in read_coco(out / "annotations" / "json" / "TBX11K_trainval.json")}
    test = {r.file_name: r for r in read_coco(out / "annotations" / "json" / "TBX11K_test.json")}
    recs.update(test)
    r1 = recs[mapping["scans/tb_1.png"]]
    sx, sy = SIZE / 96, SIZE / 80
    exp = [(10 * sx - 1, 12 * sy - 1, 30 * sx, 38 * sy, 1), (50 * sx - 1, 20 * sy - 1, 40 * sx, 50 * sy, 2)]
    got = [(b.x, b.y, b.w, b.h, b.category) for b in r1.boxes]
    assert np.allclose(np.array(got), np.array(exp), atol=1e-4)
    assert r1.tb_type == "active+latent"
    # pixels: plain resize of the decoded source
    arr = np.asarray(Image.open(out / "imgs" / mapping["scans/he_0.png"]))
    ref = np.asarray(Image.fromarray(_image(1)).resize((SIZE, SIZE), Image.BILINEAR))
    assert arr.shape == (SIZE, SIZE) and arr.dtype == np.uint8 and np.array_equal(arr, ref)
    # the manifest's split column is used; names are generated per class
    assert sorted(mapping.values()) == sorted(
        [f"health/h000{i}.png" for i in (1, 2, 3)]
        + [f"sick/s000{i}.png" for i in (1, 2, 3)]
        + [f"tb/tb000{i}.png" for i in (1, 2, 3)]
    )
    val = (out / "lists" / "TBX11K_val.txt").read_text().split()
    assert sorted(val) == sorted(mapping[f"scans/{c}_1.png"] for c in ("he", "si", "tb"))
    assert mapping["scans/tb_2.png"] in test
    # VOC XML at the original resolution next to the images
    ann = read_voc(out / "annotations" / "xml" / (Path(mapping["scans/tb_1.png"]).stem + ".xml"))
    assert (ann.width, ann.height) == (96, 80)
    assert [(o.xmin, o.xmax) for o in ann.objects] == [(10, 40), (50, 90)]
    # patient ids: salted hash in the JSON
    assert r1.patient_id == patient_hash("PAT008", None) and "PAT008" not in json.dumps(
        json.loads((out / "annotations" / "json" / "TBX11K_trainval.json").read_text())
    )
    assert (out / "provenance.json").is_file() and (out / "build_report.json").is_file()
    assert validate_dataset(out).errors == []


def test_raw_without_split_column_uses_split_records(tmp_path):
    src = tmp_path / "src"
    make_export(src, n=4, split=False)
    rep = build_dataset(src, tmp_path / "out", BuildConfig(size=SIZE, seed=3))
    assert sum(rep.counts["by_split"].values()) == 12
    assert set(rep.counts["by_split"]) <= {"train", "val", "test"}
    assert validate_dataset(tmp_path / "out").errors == []


def test_build_splits_like_dataset_split(tmp_path, cli):
    """`dataset build --published` (or --ratio / --tb-quota) assigns the split `dataset split`
    would: the same lists as a default build followed by `dataset split --published`."""
    src = tmp_path / "src"
    make_export(src, n=12, split=False)
    code, _, err = cli("dataset", "build", src, tmp_path / "pub", "--size", SIZE, "--published", "--seed", 2)
    assert code == 0, err
    assert cli("dataset", "build", src, tmp_path / "two", "--size", SIZE, "--seed", 2)[0] == 0
    code, _, err = cli("dataset", "split", tmp_path / "two", "--published", "--seed", 2, "--force")
    assert code == 0, err
    for name in ("TBX11K_train", "TBX11K_val", "TBX11K_test"):
        a = (tmp_path / "pub" / "lists" / f"{name}.txt").read_text()
        assert a == (tmp_path / "two" / "lists" / f"{name}.txt").read_text(), name
    # the published TB rule, 3:1:2 over 12 TB images = 6 / 2 / 4 (the default 3:2:1 gives 6 / 4 / 2)
    tb = [
        sum(ln.startswith("tb/") for ln in (tmp_path / "pub" / "lists" / f"TBX11K_{s}.txt").open())
        for s in ("train", "val", "test")
    ]
    assert tb == [6, 2, 4]
    code, _, err = cli("dataset", "build", src, tmp_path / "bad", "--published", "--ratio", "3:2:1")
    assert code == 2 and "--published fixes" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists() and not (tmp_path / "bad.partial").exists()
    code, _, err = cli("dataset", "build", src, tmp_path / "bad", "--tb-quota", "both")
    assert code == 2 and "--tb-quota" in err and not (tmp_path / "bad").exists()


def test_workers_give_identical_bytes(tmp_path):
    src = tmp_path / "src"
    make_export(src)
    build_dataset(src, tmp_path / "a", BuildConfig(size=SIZE, workers=1))
    build_dataset(src, tmp_path / "b", BuildConfig(size=SIZE, workers=2))
    a, b = all_bytes(tmp_path / "a"), all_bytes(tmp_path / "b")
    assert a == b


def test_dicom_export_has_no_phi_anywhere(tmp_path, cli):
    src = tmp_path / "src"
    (src / "dcm").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, (label, phot, bits) in enumerate(
        [("healthy", "MONOCHROME1", 12), ("sick", "MONOCHROME2", 16), ("tb", "MONOCHROME2", 12)]
    ):
        arr = rng.integers(0, 2**bits, (70, 90)).astype(np.uint16)
        name = f"dcm/ZQPHI_Smith_Johanna_{i}.dcm"
        write_dicom(
            src / name,
            arr,
            bits_stored=bits,
            photometric=phot,
            window=(2 ** (bits - 1), 2**bits),
            phi={**PHI, "PatientID": f"ZQPHIID471{i}"},
        )
        rows.append(
            [name, f"ZQPHIID471{i}", label, "active" if label == "tb" else "none", "ZQPHI CLINIC", "train"]
        )
    _xml(
        src / "xml" / "ZQPHI_Smith_Johanna_2.xml",
        "ZQPHI_Smith_Johanna_2.dcm",
        90,
        70,
        [("ActiveTuberculosis", 5, 5, 40, 40)],
    )
    write_manifest(src, rows)
    out = tmp_path / "out"
    code, stdout, err = cli(
        "dataset",
        "build",
        src,
        out,
        "--size",
        SIZE,
        "--salt",
        "ZQSALTSECRET",
        "--mapping",
        tmp_path / "private" / "map.csv",
    )
    assert code == 0, err
    secrets = [
        *PHI.values(),
        "ZQPHI",
        "Smith",
        "Johanna",
        "ZQPHIID",
        "ZQSALTSECRET",
        str(src),
        "ZQACC",
        "DOE",
        "19450203",
    ]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) >= 10
    for p in files:
        data = p.read_bytes()
        for s in secrets:
            assert s.encode() not in data and s.lower().encode() not in data.lower(), (p, s)
        assert "ZQPHI" not in str(p.relative_to(out))
    # the mapping (outside OUT) is the only link back to the source names
    mapping = {r["original"]: r["new"] for r in csv.DictReader(open(tmp_path / "private" / "map.csv"))}
    assert sorted(mapping) == sorted(r[0] for r in rows)
    assert json.loads((out / "provenance.json").read_text())["config"]["salt"] != "ZQSALTSECRET"


def test_monochrome1_dicom_pixels_through_build(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 4095, 128).astype(np.uint16), (128, 1))
    write_dicom(src / "d" / "a.dcm", ramp, photometric="MONOCHROME1")
    write_dicom(src / "d" / "b.dcm", ramp, photometric="MONOCHROME2")
    write_manifest(
        src, [["d/a.dcm", "1", "healthy", "none", "", "train"], ["d/b.dcm", "2", "sick", "none", "", "train"]]
    )
    build_dataset(src, tmp_path / "out", BuildConfig(size=SIZE))
    m1 = np.asarray(Image.open(tmp_path / "out" / "imgs" / "health" / "h0001.png"), dtype=int)
    m2 = np.asarray(Image.open(tmp_path / "out" / "imgs" / "sick" / "s0001.png"), dtype=int)
    expect = np.asarray(
        Image.fromarray(np.rint(ramp / 4095 * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BILINEAR),
        dtype=int,
    )
    assert np.array_equal(m2, expect) and np.array_equal(m1, 255 - expect)


def test_synth_raw_dicom_end_to_end(tmp_path):
    synth = pytest.importorskip("tbx.data.synth")
    cfg = synth.SynthConfig(
        n_healthy=2,
        n_sick=2,
        n_active=2,
        n_latent=1,
        n_both=1,
        n_uncertain=0,
        size=96,
        seed=1,
        raw=True,
        dicom=True,
        raw_width=(150, 220),
        n_repeat_patients=1,
    )
    truth = synth.synthesize(tmp_path / "src", cfg)
    out = tmp_path / "out"
    rep = build_dataset(tmp_path / "src", out, BuildConfig(size=SIZE, mapping=str(tmp_path / "map.csv")))
    assert [d["kind"] for d in rep.duplicates] == ["patient"]
    assert rep.n_images == len(truth) - 1
    mapping = {r["original"]: r["new"] for r in csv.DictReader(open(tmp_path / "map.csv"))}
    built = {}
    for name in ("all_train", "all_val", "all_test"):
        p = out / "annotations" / "json" / f"{name}.json"
        if p.is_file():
            built.update({r.file_name: r for r in read_coco(p)})
    for t in truth:
        if t.file_name not in mapping:
            continue
        r = built[mapping[t.file_name]]
        assert r.label == t.label
        # synth's VOC boxes are 1-based (xmin = first column + 1); official rule: scale, then −1
        exp = [
            (
                (b.x + 1) * SIZE / t.width - 1,
                (b.y + 1) * SIZE / t.height - 1,
                b.w * SIZE / t.width,
                b.h * SIZE / t.height,
                b.category,
            )
            for b in t.boxes
        ]
        got = [(b.x, b.y, b.w, b.h, b.category) for b in r.boxes]
        assert len(got) == len(exp)
        if exp:
            assert np.allclose(sorted(got), sorted(exp), atol=1e-3)
    assert validate_dataset(out).errors == []


# ----------------------------------------------------------------------------------------------
# bad inputs: exit code 2, the message names the file, OUT is not created


def _bad(cli, src: Path, out: Path, needle: str, *extra: str) -> str:
    code, stdout, err = cli("dataset", "build", src, out, "--size", SIZE, *extra)
    assert code == 2, (stdout, err)
    assert needle in err, err
    assert not out.exists()
    return err


def test_bad_corrupt_image(tmp_path, cli):
    src = tmp_path / "src"
    make_export(src)
    (src / "scans" / "si_1.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    err = _bad(cli, src, tmp_path / "out", "si_1.png")
    assert "manifest line 6" in err


def test_bad_unsupported_transfer_syntax(tmp_path, cli):
    from pydicom.uid import JPEGLSLossless

    src = tmp_path / "src"
    make_export(src)
    write_dicom(
        src / "scans" / "jls.dcm",
        np.zeros((8, 8), np.uint16),
        transfer_syntax=JPEGLSLossless,
        pixel_bytes=b"\xff\xd8\xff\xf7" + b"\0" * 60,
    )
    rows = list(csv.reader(open(src / "manifest.csv")))[1:]
    rows.append(["scans/jls.dcm", "X1", "healthy", "none", "", "train"])
    write_manifest(src, rows)
    err = _bad(cli, src, tmp_path / "out", "jls.dcm")
    assert "transfer syntax" in err


def test_bad_box_outside_image(tmp_path, cli):
    src = tmp_path / "src"
    make_export(src)
    _xml(src / "xml" / "tb_0.xml", "tb_0.png", 96, 80, [("ActiveTuberculosis", 10, 10, 120, 40)])
    err = _bad(cli, src, tmp_path / "out", "tb_0.xml")
    assert "outside" in err


def test_bad_zero_size_box(tmp_path, cli):
    src = tmp_path / "src"
    make_export(src)
    _xml(src / "xml" / "tb_2.xml", "tb_2.png", 96, 80, [("ActiveTuberculosis", 10, 10, 10, 40)])
    err = _bad(cli, src, tmp_path / "out", "tb_2.xml")
    assert "zero" in err


def test_bad_box_label(tmp_path, cli):
    src = tmp_path / "src"
    make_export(src)
    _xml(src / "xml" / "tb_0.xml", "tb_0.png", 96, 80, [("Pneumonia", 10, 10, 30, 40)])
    err = _bad(cli, src, tmp_path / "out", "tb_0.xml")
    assert "Pneumonia" in err


def test_bad_manifest_label(tmp_path, cli):
    src = tmp_path / "src"
    rows = make_export(src)
    rows[4][2] = "covid"
    write_manifest(src, rows)
    _bad(cli, src, tmp_path / "out", "manifest.csv:6")


def test_bad_missing_file(tmp_path, cli):
    src = tmp_path / "src"
    make_export(src)
    (src / "scans" / "he_2.png").unlink()
    err = _bad(cli, src, tmp_path / "out", "manifest.csv:4")
    assert "he_2.png" in err


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_bad_path_escaping_source(tmp_path, cli, kind):
    src = tmp_path / "src"
    rows = make_export(src)
    outside = tmp_path / "elsewhere.png"
    Image.fromarray(_image(99)).save(outside)
    if kind == "dotdot":
        rows[0][0] = "../elsewhere.png"
    elif kind == "absolute":
        rows[0][0] = str(outside)
    else:
        os.symlink(outside, src / "scans" / "link.png")
        rows[0][0] = "scans/link.png"
    write_manifest(src, rows)
    err = _bad(cli, src, tmp_path / "out", "manifest.csv:2")
    assert "outside" in err or "escapes" in err or "absolute" in err


def test_skip_bad_lists_rows_without_names(tmp_path, cli):
    src = tmp_path / "src"
    rows = make_export(src)
    (src / "scans" / "si_1.png").write_bytes(b"garbage")
    rows[1][2] = "covid"
    write_manifest(src, rows)
    code, stdout, err = cli("dataset", "build", src, tmp_path / "out", "--size", SIZE, "--skip-bad")
    assert code == 0, err
    assert "si_1.png" in stdout  # printed on the console …
    rep = json.loads((tmp_path / "out" / "build_report.json").read_text())
    assert sorted(s["manifest_line"] for s in rep["skipped_bad"]) == [3, 6]
    assert "si_1" not in json.dumps(rep) and "he_1" not in json.dumps(rep)  # … but not in OUT
    assert rep["n_images"] == 7


# ----------------------------------------------------------------------------------------------
# resume, duplicates


def test_resume_after_failure_reuses_images_and_gives_same_bytes(tmp_path, cli):
    src = tmp_path / "src"
    make_export(src)
    good = (src / "scans" / "tb_2.png").read_bytes()
    (src / "scans" / "tb_2.png").write_bytes(b"broken")
    out = tmp_path / "out"
    code, _, err = cli("dataset", "build", src, out, "--size", SIZE)
    assert code == 2 and "tb_2.png" in err and not out.exists()
    assert (tmp_path / "out.partial" / ".build_state.json").is_file()
    (src / "scans" / "tb_2.png").write_bytes(good)
    rep = build_dataset(src, out, BuildConfig(size=SIZE))
    assert (rep.reused, rep.decoded) == (8, 1)
    assert not (tmp_path / "out.partial").exists()
    build_dataset(src, tmp_path / "clean", BuildConfig(size=SIZE))
    a, b = all_bytes(out), all_bytes(tmp_path / "clean")
    assert a == b
    # re-running over a finished OUT: refused without --overwrite; with it, nothing is decoded
    code, _, err = cli("dataset", "build", src, out, "--size", SIZE)
    assert code == 2 and "exists" in err
    rep = build_dataset(src, out, BuildConfig(size=SIZE, overwrite=True))
    assert (rep.reused, rep.decoded) == (9, 0)
    assert all_bytes(out) == b


def test_duplicate_patients_and_pixels(tmp_path):
    src = tmp_path / "src"
    rows = make_export(src)
    rows[4][1] = rows[3][1]  # sick image 2 belongs to the patient of sick image 1
    shutil.copy(src / "scans" / "he_0.png", src / "scans" / "copy.png")
    rows.append(["scans/copy.png", "OTHER", "healthy", "none", "hospital", "train"])
    write_manifest(src, rows)
    rep = build_dataset(src, tmp_path / "out", BuildConfig(size=SIZE))
    assert [(d["kind"], d["manifest_line"], d["duplicate_of_line"], d["action"]) for d in rep.duplicates] == [
        ("patient", 6, 5, "dropped"),
        ("pixels", 11, 2, "dropped"),
    ]
    assert rep.n_images == 8
    rep = build_dataset(src, tmp_path / "out2", BuildConfig(size=SIZE, allow_multi_per_patient=True))
    assert rep.n_images == 9 and [d["action"] for d in rep.duplicates] == ["kept", "dropped"]
    recs = read_coco(tmp_path / "out2" / "annotations" / "json" / "TBX11K_trainval.json")
    pids = [r.patient_id for r in recs if r.label == "sick"]
    assert len(set(pids)) == len(pids) - 1  # the two images of one patient share the hash
    # the manifest put that patient's two images in train and val: reported by build and validate
    assert rep.warnings == ["manifest lines 5, 6: one patient in train and val (leakage between splits)"]
    found = validate_dataset(tmp_path / "out2")
    assert [f.check for f in found.warnings] == ["patients"]
    assert [(f.check, f.message) for f in found.errors] == [("splits", "patient has images in train, val")]


def test_mapping_inside_out_is_refused(tmp_path, cli):
    src = tmp_path / "src"
    make_export(src)
    out = tmp_path / "out"
    _bad(cli, src, out, "mapping", "--mapping", out / "map.csv")


# ----------------------------------------------------------------------------------------------
# more raw-export features


def test_boxes_csv_difficult_and_rgb_output(tmp_path):
    src = tmp_path / "src"
    rows = make_export(src)
    shutil.rmtree(src / "xml")
    (src / "boxes.csv").write_text(
        "file,xmin,ymin,xmax,ymax,label\n"
        "scans/tb_0.png,10,12,40,50,active\n"
        "scans/tb_1.png,20,20,60,60,ObsoletePulmonaryTuberculosis\n"
        "scans/tb_2.png,5,5,30,30,uncertain\n"
    )
    for r in rows:
        if r[2] == "tb":
            r[3] = "active"
    write_manifest(src, rows)
    rep = build_dataset(
        src, tmp_path / "out", BuildConfig(size=SIZE, channels=3, mapping=str(tmp_path / "m.csv"))
    )
    mapping = {r["original"]: r["new"] for r in csv.DictReader(open(tmp_path / "m.csv"))}
    recs = {}
    for n in ("TBX11K_trainval", "TBX11K_test"):
        path = tmp_path / "out" / "annotations" / "json" / f"{n}.json"
        recs.update({r.file_name: r for r in read_coco(path)})
    b = recs[mapping["scans/tb_1.png"]].boxes[0]
    assert b.category == 2
    assert (round(b.x, 4), round(b.w, 4)) == (round(20 * SIZE / 96 - 1, 4), round(40 * SIZE / 96, 4))
    assert recs[mapping["scans/tb_2.png"]].tb_type == "uncertain"
    assert any("disagrees" in w for w in rep.warnings)  # manifest said active, boxes say latent
    im = Image.open(tmp_path / "out" / "imgs" / mapping["scans/he_0.png"])
    assert im.mode == "RGB" and im.size == (SIZE, SIZE)
    # a difficult box is ignored (docs/dataset.md §1.3)
    src2 = tmp_path / "src2"
    make_export(src2)
    _xml(
        src2 / "xml" / "tb_0.xml",
        "tb_0.png",
        96,
        80,
        [("ActiveTuberculosis", 10, 10, 40, 40), ("ObsoletePulmonaryTuberculosis", 50, 10, 90, 60)],
        difficult=(1,),
    )
    build_dataset(src2, tmp_path / "out2", BuildConfig(size=SIZE))
    tb = read_coco(tmp_path / "out2" / "annotations" / "json" / "TBX11K_train.json")
    assert [[b.category for b in r.boxes] for r in tb if r.file_name == "tb/tb0001.png"] == [[1]]


def test_extra_sources_keep_their_naming_rules(tmp_path):
    src = tmp_path / "src"
    rows = make_export(src, n=3)
    k = 100
    for source in ("da", "shenzhen"):
        for label in ("healthy", "tb"):
            k += 1
            Image.fromarray(_image(k)).save(src / "scans" / f"x{k}.png")
            rows.append(
                [f"scans/x{k}.png", f"E{k}", label, "unknown" if label == "tb" else "none", source, "train"]
            )
    write_manifest(src, rows)
    rep = build_dataset(src, tmp_path / "out", BuildConfig(size=SIZE))
    assert rep.counts["by_source"] == {"tbx11k": 9, "da": 2, "shenzhen": 2}
    recs = read_coco(tmp_path / "out" / "annotations" / "json" / "all_train.json")
    extra = sorted((r.file_name, r.label, r.source) for r in recs if r.source != "tbx11k")
    assert extra == [
        ("extra/da+db/train/n1.png", "healthy", "da"),
        ("extra/da+db/train/p2.png", "tb", "da"),
        ("extra/mc+shenzhen/train/CHNCXR_0001_0.png", "healthy", "shenzhen"),
        ("extra/mc+shenzhen/train/CHNCXR_0002_1.png", "tb", "shenzhen"),
    ]
    tbx_only = read_coco(tmp_path / "out" / "annotations" / "json" / "TBX11K_train.json")
    assert all(r.source == "tbx11k" for r in tbx_only)
    assert not any("without any box" in w for w in rep.warnings)  # extras have no boxes by design


def test_bad_xml_size_and_boxes_on_non_tb(tmp_path, cli):
    src = tmp_path / "src"
    make_export(src)
    _xml(src / "xml" / "tb_0.xml", "tb_0.png", 200, 80, [("ActiveTuberculosis", 10, 10, 40, 40)])
    err = _bad(cli, src, tmp_path / "out", "tb_0.xml")
    assert "200×80" in err
    src2 = tmp_path / "src2"
    make_export(src2)
    _xml(src2 / "xml" / "he_1.xml", "he_1.png", 96, 80, [("ActiveTuberculosis", 10, 10, 40, 40)])
    err = _bad(cli, src2, tmp_path / "out2", "he_1.xml")
    assert "healthy image has boxes" in err


def test_resume_after_interrupt_mid_decoding(tmp_path):
    src = tmp_path / "src"
    make_export(src)

    def interrupt(done: int, total: int) -> None:
        if done == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_dataset(src, tmp_path / "out", BuildConfig(size=SIZE), progress=interrupt)
    assert (tmp_path / "out.partial").is_dir() and not (tmp_path / "out").exists()
    rep = build_dataset(src, tmp_path / "out", BuildConfig(size=SIZE))
    assert (rep.reused, rep.decoded) == (4, 5)
    build_dataset(src, tmp_path / "clean", BuildConfig(size=SIZE))
    assert all_bytes(tmp_path / "out") == all_bytes(tmp_path / "clean")
