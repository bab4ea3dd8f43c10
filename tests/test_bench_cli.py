"""`tbx bench` and `tbx bench compare` through the CLI: typer wiring, JSON schema, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tbx.bench.protocol import BenchConfig, compare, evaluate
from tbx.bench.results_io import write_bbox_result, write_cls_result


def make_case(root: Path, seed: int = 0, n: int = 90, quality: float = 1.5) -> tuple[Path, Path, Path]:
    """GT with healthy/sick/TB(+uncertain) and extra images, plus two prediction folders."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(n):
        kind = i % 3
        fn = ("health/h", "sick/s", "tb/t")[kind] + f"{i:03d}.png"
        images.append({"id": i + 1, "file_name": fn, "width": 512, "height": 512})
        if kind == 2:
            for _ in range(int(rng.integers(1, 3))):
                x, y = rng.uniform(0, 400, 2)
                cat = 3 if i == 2 else int(rng.integers(1, 3))
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": cat,
                        "iscrowd": 0,
                        "bbox": [float(x), float(y), 60.0, 50.0],
                        "area": 3000.0,
                    }
                )
    for j in range(10):
        images.append(
            {
                "id": n + j + 1,
                "file_name": f"extra/da+db/test/{'p' if j < 4 else 'n'}{j}.png",
                "width": 512,
                "height": 512,
            }
        )
    gt = root / "gt.json"
    gt.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [
                    {"id": 1, "name": "ActiveTuberculosis"},
                    {"id": 2, "name": "ObsoletePulmonaryTuberculosis"},
                    {"id": 3, "name": "PulmonaryTuberculosis"},
                ],
            }
        )
    )
    y = np.array(
        [
            2
            if "tb/" in im["file_name"] or "/p" in im["file_name"]
            else 1
            if "sick" in im["file_name"]
            else 0
            for im in images
        ]
    )
    preds = []
    for k, q in enumerate((quality, quality / 2)):
        logits = rng.normal(0, 1, (len(images), 3))
        logits[np.arange(len(images)), y] += q
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        dets = []
        for a in anns:
            x, yy, w, h = a["bbox"]
            dets.append(
                {
                    "image_id": a["image_id"],
                    "category_id": min(a["category_id"], 2),
                    "bbox": [x + rng.normal(0, 4 * (k + 1)), yy + rng.normal(0, 4), w, h],
                    "score": float(rng.uniform(0.3, 1)),
                }
            )
        for im in images[:n]:
            dets.append(
                {
                    "image_id": im["id"],
                    "category_id": int(rng.integers(1, 3)),
                    "bbox": [float(rng.uniform(0, 400)), float(rng.uniform(0, 400)), 40.0, 40.0],
                    "score": float(rng.uniform(0, 0.8)),
                }
            )
        pred = root / f"pred{k}"
        write_cls_result(pred / "cls_result.txt", probs)
        write_bbox_result(pred / "bbox_result.json", dets)
        preds.append(pred)
    return gt, preds[0], preds[1]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return make_case(tmp_path_factory.mktemp("benchcli"))


def _paths(tree, prefix=""):
    out = set()
    if isinstance(tree, dict):
        for k, v in tree.items():
            out |= _paths(v, f"{prefix}.{k}" if prefix else k)
    else:
        out.add(prefix)
    return out


def test_cli_bench_json_and_provenance(cli, case, tmp_path):
    gt, pred, _ = case
    out = tmp_path / "res" / "bench.json"
    code, stdout, err = cli(
        "bench", "--gt", gt, "--pred", pred, "--json", out, "--bootstrap", "30", "--seed", "1"
    )
    assert code == 0, err
    assert "Image classification" in stdout and "TB area detection" in stdout
    assert "Screening operating points" in stdout
    res = json.loads(out.read_text())
    prov = json.loads((out.parent / f"{out.stem}.provenance.json").read_text())
    assert prov["seed"] == 1 and prov["config"]["bootstrap"] == 30
    c = res["classification"]
    for k in (
        "accuracy",
        "auc",
        "sensitivity",
        "specificity",
        "ap",
        "ar",
        "f1",
        "confusion",
        "tp",
        "tn",
        "fp",
        "fn",
        "tp_share",
        "tn_share",
        "fp_share",
        "fn_share",
        "roc",
    ):
        assert k in c
    assert all(0 <= c[k] <= 1 for k in ("accuracy", "auc", "sensitivity", "specificity", "ap", "ar", "f1"))
    assert c["tp"] + c["tn"] + c["fp"] + c["fn"] == 100 == sum(map(sum, c["confusion"]))
    for mode in ("all_cxr", "tb_only"):
        for row in ("agnostic", "active", "latent"):
            r = res["detection"][mode][row]
            assert {"ap", "ap50", "ar100", "froc", "pr", "froc_curve", "analysis"} <= set(r)
            assert len(r["pr"]["iou50"]) == len(r["pr"]["iou75"]) == 101
            assert r["froc"]["fppi"] == [0.125, 0.25, 0.5, 1, 2, 4, 8]
    assert set(res["operating_points"]) == {"sensitivity_at_specificity", "specificity_at_sensitivity"}
    # the CI block mirrors the metric paths, each value a [lo, hi] pair around the estimate
    ci = res["ci"]
    assert ci["n_bootstrap"] == 30 and ci["seed"] == 1
    for path in _paths({k: ci[k] for k in ("classification", "detection", "operating_points")}):
        node, point = ci, res
        for p in path.split("."):
            node, point = node[p], point[p]
        if isinstance(point, list):  # froc sensitivities: one interval per rate
            assert len(node) == len(point)
            continue
        lo, hi = node
        if point is not None and lo is not None:
            assert lo - 1e-12 <= hi and 0 <= lo and hi <= 1, path
    assert ci["classification"]["auc"][0] <= c["auc"] <= ci["classification"]["auc"][1]
    # deterministic for a seed
    again = evaluate(gt, pred, BenchConfig(bootstrap=30, seed=1))
    assert again["ci"]["classification"] == res["ci"]["classification"]
    assert again["ci"]["detection"] == res["ci"]["detection"]


def test_cli_compare(cli, case, tmp_path):
    gt, a, b = case
    out = tmp_path / "cmp.json"
    code, stdout, err = cli("bench", "compare", a, b, "--gt", gt, "--bootstrap", "40", "--json", out)
    assert code == 0, err
    assert "DeLong test" in stdout
    res = json.loads(out.read_text())
    assert res["ci"]["n_bootstrap"] == 40
    ra, rb = evaluate(gt, a), evaluate(gt, b)
    d = res["diff"]["classification"]["accuracy"]
    assert d == pytest.approx(ra["classification"]["accuracy"] - rb["classification"]["accuracy"])
    assert res["diff"]["detection"]["tb_only"]["active"]["ap50"] == pytest.approx(
        ra["detection"]["tb_only"]["active"]["ap50"] - rb["detection"]["tb_only"]["active"]["ap50"]
    )
    lo, hi = res["ci"]["classification"]["auc"]
    assert lo <= res["diff"]["classification"]["auc"] <= hi
    dl = res["delong"]
    assert dl["diff"] == pytest.approx(ra["classification"]["auc"] - rb["classification"]["auc"])
    assert 0 <= dl["p"] <= 1


def test_compare_with_itself_is_zero(case):
    gt, a, _ = case
    res = compare(gt, a, a, BenchConfig(bootstrap=20, mode="tb-only"))
    assert res["diff"]["classification"]["accuracy"] == 0
    assert res["ci"]["classification"]["accuracy"] == [0, 0]
    assert res["delong"]["p"] == 1.0


def test_cli_usage_errors(cli, case):
    gt, pred, _ = case
    code, _, err = cli("bench", "--gt", gt)
    assert code == 2 and "--pred" in err
    code, _, err = cli("bench", "--gt", gt, "--pred", pred, "--mode", "everything")
    assert code == 2 and "unknown mode" in err
    code, _, err = cli("bench", "--gt", gt, "--pred", gt.parent / "missing")
    assert code == 2 and "prediction folder not found" in err
    code, out, _ = cli("bench", "--help")
    assert code == 0 and "compare" in out and "--keep-uncertain" in out
