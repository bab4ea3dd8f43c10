"""Near-duplicate findings of `tbx dataset validate`, on real CXRs (../shared/data/cxr-samples):
every pHash candidate is confirmed pixel by pixel; identical images across splits are errors,
confirmed near-duplicates warnings with the similarity figure, different patients not reported."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tbx.data.duplicates import MIN_CORRELATION, pixel_match
from tbx.data.records import Record
from tbx.data.validate import ValidateConfig, validate_dataset
from tbx.data.views import write_views

# train/val members of the fixture; da_n11 (train) and da_p18 (val) are different patients whose
# pHashes are 8 bits apart (the closest pair among the 48 samples) — a candidate at threshold 10
TRAIN = ["da_n11.png", "montgomery_MCUCXR_0004_0.png", "shenzhen_CHNCXR_0052_0.png", "db_nx20.jpg"]
VAL = ["da_p18.png", "montgomery_MCUCXR_0028_0.png", "shenzhen_CHNCXR_0095_0.png", "db_px27.jpg"]


def _gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def _corr_256(a: np.ndarray, b: np.ndarray) -> float:
    """Independent reference: numpy's Pearson correlation at 256×256 (PIL box resampling)."""

    def small(x: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(x).resize((256, 256), Image.BOX), dtype=np.float64).ravel()

    return float(np.corrcoef(small(a), small(b))[0, 1])


def _layout(root: Path, samples: Path, extra_val: dict[str, np.ndarray] | None = None) -> Path:
    """health/ images: TRAIN in train, VAL (+ extra_val arrays) in val, written as 8-bit PNGs."""
    recs = []
    items = [(n, _gray(samples / n), "train") for n in TRAIN] + [(n, _gray(samples / n), "val") for n in VAL]
    items += [(n, a, "val") for n, a in (extra_val or {}).items()]
    for i, (_, arr, split) in enumerate(items, start=1):
        fn = f"health/h{i:04d}.png"
        (root / "imgs" / fn).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / "imgs" / fn)
        recs.append(Record(i, fn, arr.shape[1], arr.shape[0], "healthy", "none", split=split))
    write_views(root, recs)
    return root


def _dup_findings(rep) -> list:
    return [f for f in rep.findings if f.check == "near-duplicates"]


@pytest.fixture()
def samples(shared_data) -> Path:
    return shared_data / "cxr-samples"


def test_identical_copy_across_splits_is_an_error(tmp_path, samples, cli):
    copy = _gray(samples / TRAIN[1])
    root = _layout(tmp_path / "ds", samples, {"copy": copy})
    rep = validate_dataset(root)
    (f,) = _dup_findings(rep)
    assert f.severity == "error" and "pixel-identical" in f.message and "split train vs val" in f.message
    assert {f.path, f.message.split()[2]} == {"health/h0002.png", "health/h0009.png"}
    assert rep.stats["near_duplicates"]["identical"] == 1
    code, out, _ = cli("dataset", "validate", root)
    assert code == 1 and "pixel-identical" in out


def test_reencoded_brightened_copy_is_a_warning_with_the_figure(tmp_path, samples):
    src = _gray(samples / TRAIN[2])
    buf = io.BytesIO()
    Image.fromarray(src).save(buf, "JPEG", quality=70)
    copy = np.clip(np.asarray(Image.open(buf).convert("L")).astype(int) + 15, 0, 255).astype(np.uint8)
    root = _layout(tmp_path / "ds", samples, {"copy": copy})
    rep = validate_dataset(root)
    (f,) = _dup_findings(rep)
    assert f.severity == "warning" and rep.errors == []
    assert {f.path, f.message.split()[2]} == {"health/h0003.png", "health/h0009.png"}
    figure = float(re.search(r"pixel correlation (\d\.\d+)", f.message).group(1))
    assert figure == pytest.approx(_corr_256(src, copy), abs=1e-4) and figure >= MIN_CORRELATION
    assert "pHash distance" in f.message


def test_different_patients_with_close_hashes_are_not_reported(tmp_path, samples):
    root = _layout(tmp_path / "ds", samples)
    rep = validate_dataset(root, ValidateConfig(dhash_threshold=10))
    st = rep.stats["near_duplicates"]
    assert st["candidates"] >= 1 and st["identical"] == st["confirmed"] == 0
    assert st["rejected"] == st["candidates"]
    want = _corr_256(_gray(samples / "da_n11.png"), _gray(samples / "da_p18.png"))
    assert want < MIN_CORRELATION and st["max_rejected_correlation"] >= round(want, 4)
    assert [f.severity for f in _dup_findings(rep)] == ["info"]  # counted, not reported as a pair
    assert rep.errors == [] and rep.warnings == []


def test_pixel_match_edge_cases(samples):
    a = _gray(samples / TRAIN[0])
    assert pixel_match(a, a.copy()).identical
    half = np.asarray(Image.fromarray(a).resize((256, 256), Image.BOX))
    m = pixel_match(a, half)  # same picture at another size: not identical, correlation ≈ 1
    assert not m.identical and m.correlation > 0.999
    flat = np.full((64, 64), 7, np.uint8)
    assert pixel_match(flat, flat.copy()).identical
    assert pixel_match(flat, np.full((32, 32), 7, np.uint8)).correlation == 1.0
    assert pixel_match(flat, np.full((64, 64), 9, np.uint8)).correlation == 0.0
    assert pixel_match(flat, a).correlation == 0.0


def test_sources_differ_same_split_identical_is_a_warning(tmp_path, samples):
    root = _layout(tmp_path / "ds", samples)
    # the same image also under an extra source in the same split: duplicated, not leaked
    recs_dir = root / "imgs" / "extra" / "da+db" / "train"
    recs_dir.mkdir(parents=True)
    shutil.copy(root / "imgs" / "health" / "h0001.png", recs_dir / "n99.png")
    recs = [
        Record(
            i,
            f"health/h{i:04d}.png",
            512,
            512,
            "healthy",
            "none",
            split="train" if i <= len(TRAIN) else "val",
        )
        for i in range(1, 9)
    ]
    recs.append(
        Record(9, "extra/da+db/train/n99.png", 512, 512, "healthy", "none", source="da", split="train")
    )
    write_views(root, recs)
    (f,) = [f for f in _dup_findings(validate_dataset(root)) if f.severity != "info"]
    assert f.severity == "warning" and "pixel-identical" in f.message and "source da vs tbx11k" in f.message
