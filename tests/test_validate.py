"""`tbx dataset validate`: a good synthetic layout, corrupted copies of it, the real metadata."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tbx.data.validate import ValidateConfig, validate_dataset


@pytest.fixture()
def layout(synth_root, tmp_path) -> Path:
    root = tmp_path / "TBX11K"
    shutil.copytree(synth_root, root)
    return root


def _json(root: Path, name: str) -> dict:
    return json.loads((root / "annotations" / "json" / f"{name}.json").read_text())


def _save(root: Path, name: str, data: dict) -> None:
    (root / "annotations" / "json" / f"{name}.json").write_text(json.dumps(data))


def _checks(rep, severity: str = "error") -> set[str]:
    return {f.check for f in rep.findings if f.severity == severity}


def test_good_layout_has_no_errors(synth_root):
    rep = validate_dataset(synth_root, ValidateConfig(near_duplicates=False))
    assert rep.errors == [], rep.errors
    assert rep.stats["images"] == 48


def test_missing_image(layout):
    victim = _json(layout, "TBX11K_train")["images"][0]["file_name"]
    (layout / "imgs" / victim).unlink()
    rep = validate_dataset(layout, ValidateConfig(near_duplicates=False))
    assert [f for f in rep.errors if f.check == "images" and victim in f.path and "missing" in f.message]


def test_wrong_size_and_undecodable_image(layout):
    files = [i["file_name"] for i in _json(layout, "TBX11K_train")["images"]]
    Image.new("L", (100, 90)).save(layout / "imgs" / files[0])
    (layout / "imgs" / files[1]).write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    rep = validate_dataset(layout, ValidateConfig(near_duplicates=False))
    msgs = {(Path(f.path).name, f.message.split(" (")[0]) for f in rep.errors if f.check == "images"}
    assert (Path(files[0]).name, "image is 100×90, declared 256×256") in msgs
    assert (Path(files[1]).name, "image does not decode") in msgs


def test_box_outside_and_degenerate(layout):
    data = _json(layout, "TBX11K_train_only_tb")
    data["annotations"][0]["bbox"] = [200.0, 10.0, 80.0, 20.0]  # 280 > 256
    data["annotations"][1]["bbox"] = [20.0, 10.0, 0.0, 20.0]
    _save(layout, "TBX11K_train_only_tb", data)
    rep = validate_dataset(layout, ValidateConfig(near_duplicates=False))
    msgs = [f.message for f in rep.errors if f.check == "boxes"]
    assert any("outside the 256×256" in m for m in msgs) and any("degenerate" in m for m in msgs)


def test_non_tb_with_box_and_bad_category(layout):
    data = _json(layout, "TBX11K_train")
    healthy = next(i for i in data["images"] if i["file_name"].startswith("health/"))
    data["annotations"].append(
        {
            "id": 999,
            "image_id": healthy["id"],
            "category_id": 7,
            "iscrowd": 0,
            "area": 100,
            "bbox": [10.0, 10.0, 10.0, 10.0],
        }
    )
    _save(layout, "TBX11K_train", data)
    rep = validate_dataset(layout, ValidateConfig(near_duplicates=False))
    assert any(
        healthy["file_name"] in f.message and "box" in f.message for f in rep.errors if f.check == "labels"
    )
    assert "categories" in _checks(rep)


def test_overlapping_splits_and_list_mismatch(layout):
    train, val = _json(layout, "TBX11K_train"), _json(layout, "TBX11K_val")
    leaked = dict(train["images"][0], id=len(val["images"]) + 1)
    val["images"].append(leaked)
    _save(layout, "TBX11K_val", val)
    rep = validate_dataset(layout, ValidateConfig(near_duplicates=False))
    assert any(f.path == leaked["file_name"] and "several splits" in f.message for f in rep.errors)
    assert any(f.check == "lists" and "TBX11K_val" in f.path for f in rep.errors)  # list not updated


def test_duplicate_ids(layout):
    data = _json(layout, "TBX11K_val")
    data["images"][1]["id"] = data["images"][0]["id"]
    _save(layout, "TBX11K_val", data)
    rep = validate_dataset(layout, ValidateConfig(near_duplicates=False))
    assert any("duplicate image id" in f.message for f in rep.errors)


def test_near_duplicate_across_splits(layout):
    train, val = _json(layout, "TBX11K_train"), _json(layout, "TBX11K_val")
    a = train["images"][0]["file_name"]
    b = next(i["file_name"] for i in val["images"] if i["file_name"].split("/")[0] == a.split("/")[0])
    src = np.asarray(Image.open(layout / "imgs" / a).convert("L")).astype(int)
    noisy = np.clip(src + np.random.default_rng(0).integers(-3, 4, src.shape) + 5, 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(layout / "imgs" / b)
    rep = validate_dataset(layout, ValidateConfig(dhash_threshold=2))
    hits = [f for f in rep.warnings if f.check == "near-duplicates"]
    assert any({f.path, f.message.split()[2]} == {a, b} for f in hits), hits
    assert rep.errors == []


def test_real_metadata(shared_data, cli, tmp_path):
    meta = shared_data / "tbx11k-meta"
    rep = validate_dataset(meta)
    assert rep.errors == []
    assert [f.message for f in rep.warnings] == ["tb/tb1199.png: TB image without any box"]
    infos = [f for f in rep.findings if f.severity == "info"]
    assert len(infos) == 1 and "images unavailable" in infos[0].message  # once, not 6,888 times
    assert rep.stats["xml_checked"] == 600  # every published box equals its XML (official rule)
    code, out, _ = cli("dataset", "validate", meta, "--json", tmp_path / "r.json")
    assert code == 0 and "tb1199" in out
    assert json.loads((tmp_path / "r.json").read_text())["n_warnings"] == 1
    code, _, _ = cli("dataset", "validate", meta, "--strict")
    assert code == 1


def test_cli_exit_code_on_errors(layout, cli):
    (layout / "imgs" / _json(layout, "TBX11K_train")["images"][0]["file_name"]).unlink()
    code, out, _ = cli("dataset", "validate", layout)
    assert code == 1 and "missing" in out


def test_overlap_between_list_files(layout):
    val_list = layout / "lists" / "TBX11K_val.txt"
    first_test = (layout / "lists" / "all_test.txt").read_text().split()[0]
    val_list.write_text(val_list.read_text() + first_test + "\n")
    rep = validate_dataset(layout, ValidateConfig(near_duplicates=False))
    assert any(f.path == first_test and "several splits" in f.message for f in rep.errors)
