"""Prediction files (docs/protocol.md §4.1): writers, readers, the authors' published outputs, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tbx.bench.results_io import (
    read_bbox_arrays,
    read_bbox_result,
    read_cls_result,
    write_bbox_result,
    write_cls_result,
)
from tbx.errors import TbxError


def all_test_gt(path: Path) -> Path:
    """A 3,302-image GT file shaped like all_test (2,800 TBX11K + 502 extra; labels arbitrary)."""
    images = []
    for i in range(2800):
        folder = ("health/h", "sick/s", "tb/tb")[i % 3]
        images.append({"id": i + 1, "file_name": f"{folder}{i:05d}.png", "width": 512, "height": 512})
    for j in range(502):
        fn = (
            f"extra/mc+shenzhen/test/CHNCXR_{j:04d}_{j % 2}.png"
            if j % 2
            else f"extra/da+db/test/{'p' if j % 4 == 0 else 'n'}{j:04d}.png"
        )
        images.append({"id": 2801 + j, "file_name": fn, "width": 512, "height": 512})
    path.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": [],
                "categories": [
                    {"id": 1, "name": "ActiveTuberculosis"},
                    {"id": 2, "name": "ObsoletePulmonaryTuberculosis"},
                    {"id": 3, "name": "PulmonaryTuberculosis"},
                ],
            }
        )
    )
    return path


def test_official_results_read_and_tb_share(shared_data, tmp_path):
    from tbx.bench.protocol import BenchConfig, evaluate

    gt = all_test_gt(tmp_path / "all_test.json")
    n = len(json.loads(gt.read_text())["images"])
    assert n == 3302
    for f in sorted((shared_data / "official-results").glob("*.txt")):
        p = read_cls_result(f, n)
        assert p.shape == (3302, 3)
        assert np.allclose(p.sum(1), 1, atol=1e-3)
    p = read_cls_result(shared_data / "official-results" / "SymFormer_RetinaNet_R50.txt", n)
    assert round(100 * float(np.mean(p.argmax(1) == 2)), 2) == 20.44  # shared/data/README.md
    # the same share through the protocol (TP + FP over all 3,302 images)
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(shared_data / "official-results" / "SymFormer_RetinaNet_R50.txt", pred / "cls_result.txt")
    res = evaluate(gt, pred, BenchConfig())
    assert round(100 * res["classification"]["predicted_tb_share"], 2) == 20.44
    assert "detection" not in res and any("bbox_result.json absent" in n for n in res["notes"])


def test_cls_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    p = rng.dirichlet([1, 1, 1], size=50)
    write_cls_result(tmp_path / "c.txt", p)
    q = read_cls_result(tmp_path / "c.txt", 50)
    np.testing.assert_allclose(q, p, rtol=1e-7)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no leftovers


def test_bbox_roundtrip(tmp_path):
    dets = [
        {"image_id": 3, "category_id": 1, "bbox": [1.5, 2, 10, 20], "score": 0.9},
        {"image_id": 4, "category_id": 2, "bbox": [0, 0, 0, 5], "score": 0.1},
    ]
    write_bbox_result(tmp_path / "b.json", dets)
    back = read_bbox_result(tmp_path / "b.json", [3, 4], [1, 2])
    assert back == [{**d, "bbox": [float(v) for v in d["bbox"]]} for d in dets]
    arr = read_bbox_arrays(tmp_path / "b.json", [3, 4], [1, 2])
    assert arr.boxes.shape == (2, 4) and arr.image_id.tolist() == [3, 4]
    (tmp_path / "e.json").write_text("[]")
    assert read_bbox_result(tmp_path / "e.json", [3], [1]) == []


CLS_CASES = [
    ("0.2 0.3 0.5\n0.1 0.1 0.8\n", "3 lines expected", r"2 lines but the annotation file has 3"),
    ("0.2 0.3 0.5\n0.1 0.1 0.8\n0.5 0.5 0.5\n", ":3", r"sum to 1.5"),
    ("0.2 0.3 0.5\nnan 0.1 0.9\n0.3 0.3 0.4\n", ":2", r"NaN"),
    ("0.2 0.3 0.5\n0.1 0.1 0.8\n-0.1 0.6 0.5\n", ":3", r"outside \[0, 1\]"),
    ("0.2 0.3 0.5\n0.1 0.9\n0.3 0.3 0.4\n", ":2", r"expected 3 numbers, found 2"),
    ("0.2 0.3 0.5\n0.1 x 0.9\n0.3 0.3 0.4\n", ":2", r"not a number"),
    ("", "", r"empty"),
    ("\n\n", "", r"empty"),
]


@pytest.mark.parametrize("text,loc,msg", CLS_CASES)
def test_cls_bad_input(tmp_path, text, loc, msg):
    f = tmp_path / "cls_result.txt"
    f.write_text(text)
    with pytest.raises(TbxError, match=msg) as e:
        read_cls_result(f, 3)
    assert e.value.where is not None and str(f) in e.value.where
    if loc.startswith(":"):
        assert e.value.where.endswith(loc)


BBOX_CASES = [
    (
        '[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},\n'
        ' {"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]',
        ":2",
        "unknown image_id 99",
    ),
    (
        '[{"image_id": 1, "category_id": 7, "bbox": [0, 0, 1, 1], "score": 0.5}]',
        ":1",
        "unknown category_id 7",
    ),
    (
        '[\n{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},\n'
        '{"image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1], "score": 0.5}\n]',
        ":3",
        "negative box size",
    ),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}]', ":1", "bbox must be"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]', ":1", "missing key 'score'"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": NaN}]', ":1", "score must be"),
    ('[{"image_id": 1, "category_id": 1,\n "bbox": [0, 0, 1, 1], "score": }]', ":2", "invalid JSON"),
    ('{"image_id": 1}', ":1", "must be a JSON list"),
    ("", ":1", "empty"),
]


@pytest.mark.parametrize("text,loc,msg", BBOX_CASES)
def test_bbox_bad_input(tmp_path, text, loc, msg):
    f = tmp_path / "bbox_result.json"
    f.write_text(text)
    with pytest.raises(TbxError, match=msg) as e:
        read_bbox_arrays(f, [1, 2], [1, 2, 3])
    assert str(f) in e.value.where
    assert e.value.where.split(" ")[0].endswith(loc)


def test_bad_input_exit_code_2(cli, tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(
        json.dumps(
            {
                "images": [
                    {"id": i, "file_name": f"health/h{i}.png", "width": 512, "height": 512} for i in (1, 2)
                ],
                "annotations": [],
            }
        )
    )
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "cls_result.txt").write_text("0.2 0.3 0.5\n")
    code, out, err = cli("bench", "--gt", gt, "--pred", pred)
    assert code == 2
    assert "cls_result.txt" in err and "1 lines but the annotation file has 2" in err
