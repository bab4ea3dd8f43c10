"""The torch data pipeline: box-consistent resize/flip, padding, normalisation, the sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_fixtures import make_layout
from PIL import Image

from tbx.data.coco import write_coco
from tbx.data.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EpochBatchSampler,
    TBXDataset,
    collate,
    normalize_batch,
    resized_shape,
)
from tbx.data.records import Box, Record
from tbx.errors import TbxError


def _one_image_layout(root, w=100, h=60, ann_scale=1.0, box=(20, 10, 30, 20), cat=1):
    """One TB image w×h (gray 50) with a white rectangle at ``box`` (x, y, bw, bh, PNG pixels)."""
    arr = np.full((h, w), 50, np.uint8)
    x, y, bw, bh = box
    arr[y : y + bh, x : x + bw] = 255
    (root / "imgs" / "tb").mkdir(parents=True)
    Image.fromarray(arr, "L").save(root / "imgs" / "tb" / "tb0.png")
    rec = Record(
        1,
        "tb/tb0.png",
        int(w * ann_scale),
        int(h * ann_scale),
        "tb",
        boxes=[Box(x * ann_scale, y * ann_scale, bw * ann_scale, bh * ann_scale, cat)],
    )
    write_coco(root / "ann.json", [rec])
    return root / "ann.json"


def test_resize_keeps_aspect_and_maps_boxes(tmp_path):
    # 100×60 image with boxes given at 10× (the original scanner frame) → fit 64: scale 0.64.
    ann = _one_image_layout(tmp_path, ann_scale=10.0)
    ds = TBXDataset(tmp_path, ann, input_size=64, train=True)
    s = ds[0]
    assert tuple(s.image.shape) == (3, 38, 64)  # round(60·0.64) = 38, 100·0.64 = 64
    assert s.image.dtype == torch.uint8
    assert torch.equal(s.image[0], s.image[1]) and torch.equal(s.image[1], s.image[2])  # gray → 3ch
    # box (200, 100, 300, 200) in the 1000×600 frame → ×(64/1000, 38/600)
    exp = np.array([200 * 0.064, 100 * 38 / 600, 500 * 0.064, 300 * 38 / 600])
    np.testing.assert_allclose(s.boxes[0].numpy(), exp, rtol=1e-5)
    assert s.scale == pytest.approx((64 / 1000, 38 / 600))
    assert resized_shape(60, 100, 64) == (38, 64)


def test_flip_moves_boxes_with_pixels(tmp_path):
    ann = _one_image_layout(tmp_path, w=64, h=64, box=(5, 10, 12, 20))
    ds = TBXDataset(tmp_path, ann, input_size=64, train=True)
    for flip in (False, True):
        s = ds[(0, flip)]
        bright = s.image[0].numpy() > 200
        ys, xs = np.nonzero(bright)
        # independent bounding box of the bright pixels (pixel [x, x+1) convention)
        np.testing.assert_allclose(s.boxes[0].numpy(), [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert s.flipped is flip
    assert ds[(0, True)].boxes[0, 0].item() == 64 - (5 + 12)


def test_uncertain_boxes_dropped_only_for_training(tmp_path):
    ann = _one_image_layout(tmp_path, cat=3)
    assert len(TBXDataset(tmp_path, ann, 64, train=True)[0].boxes) == 0
    s = TBXDataset(tmp_path, ann, 64, train=False)[0]
    assert s.labels.tolist() == [3]


def test_collate_pads_to_32_and_normalize_zeroes_padding(tmp_path):
    ann = _one_image_layout(tmp_path, w=100, h=60)
    ds = TBXDataset(tmp_path, ann, input_size=70, train=False)
    s = ds[0]  # 70 × 42
    b = collate([s, s])
    assert tuple(b.images.shape) == (2, 3, 64, 96)
    assert b.image_sizes == [(42, 70), (42, 70)]
    x = normalize_batch(b.images, b.image_sizes)
    ref = (s.image.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(
        IMAGENET_STD
    ).view(3, 1, 1)
    torch.testing.assert_close(x[0, :, :42, :70], ref)
    assert x[:, :, 42:, :].abs().sum() == 0 and x[:, :, :, 70:].abs().sum() == 0
    assert b.targets[0]["cls_label"].item() == 2
    as_float = b.images.float()  # a float input is normalised the same way and left unchanged
    kept = as_float.clone()
    torch.testing.assert_close(normalize_batch(as_float, b.image_sizes), x)
    assert torch.equal(as_float, kept)


def test_missing_image_is_a_clear_error(tmp_path):
    ann = _one_image_layout(tmp_path)
    (tmp_path / "imgs" / "tb" / "tb0.png").unlink()
    with pytest.raises(TbxError, match="missing"):
        TBXDataset(tmp_path, ann, 64)[0]


def test_test_images_without_label_allowed_for_prediction(tmp_path):
    (tmp_path / "imgs" / "test").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "imgs" / "test" / "x.png")
    write_coco(tmp_path / "t.json", [Record(7, "test/x.png", 32, 32, "tb")])
    ds = TBXDataset(tmp_path, "t.json", 32, train=False)
    assert ds[0].cls_label == -1 and ds[0].image_id == 7
    with pytest.raises(TbxError):
        TBXDataset(tmp_path, "t.json", 32, train=True)


def test_sampler_deterministic_resumable_and_sharded():
    s = EpochBatchSampler(10, 4, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(0)
    assert list(s) == e0  # same seed & epoch → same order and flips
    s.set_epoch(1)
    assert list(s) != e0
    assert len(e0) == 3 and all(len(b) == 4 for b in e0)  # padded by wrapping: every batch full
    idx = [i for b in e0 for i, _ in b]
    assert set(idx) == set(range(10))  # every image at least once
    s.set_epoch(0, start_batch=2)
    assert list(s) == e0[2:] and len(s) == 1
    # two ranks: each takes its half of every global batch
    r0, r1 = EpochBatchSampler(10, 4, 3, 0, 2), EpochBatchSampler(10, 4, 3, 1, 2)
    for a, b, full in zip(r0, r1, e0):
        assert a + b == full
    with pytest.raises(TbxError, match="divisible"):
        EpochBatchSampler(10, 3, world_size=2)


def test_flip_probability_respected():
    s = EpochBatchSampler(2000, 8, seed=0, flip_prob=0.5)
    flips = [f for b in s for _, f in b]
    assert 0.45 < np.mean(flips) < 0.55
    assert not any(f for b in EpochBatchSampler(50, 5, flip_prob=0.0) for _, f in b)


def test_layout_fixture_loads(tmp_path):
    root = make_layout(tmp_path, n_tb=3, n_healthy=2, n_sick=1, size=32)
    ds = TBXDataset(root, "annotations/json/all_trainval.json", 32, train=True)
    assert [ds[i].cls_label for i in range(len(ds))] == [2, 2, 2, 0, 0, 1]
