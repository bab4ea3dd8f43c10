"""`tbx report`: tables, figures and html from synthetic run directories written here.

Bench JSONs are built from synthetic predictions with scikit-learn (independent of tbx), and
the report's tables are parsed back (Markdown / CSV) and compared with those numbers.
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from tbx.bench import published as pub
from tbx.bench.report import ReportConfig, load_run, make_report
from tbx.bench.report.figures import _error_curves, _global_steps, overlay_score
from tbx.bench.report.render import tex_escape
from tbx.bench.report.runs import fold_groups
from tbx.bench.report.tables import operating_point
from tbx.errors import TbxError


# ------------------------------------------------------------------------------------ fixtures
def _cls_bench(seed: int, n: int = 300) -> tuple[dict, np.ndarray, np.ndarray]:
    """Classification block of a bench JSON from synthetic 3-class predictions (sklearn numbers)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.4, 0.4, 0.2])
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.6
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = p.argmax(1)
    tb, ptb = (y == 2).astype(int), (pred == 2).astype(int)
    fpr, tpr, thr = roc_curve(tb, p[:, 2])
    cm = confusion_matrix(y, pred, labels=[0, 1, 2])
    tp = int(((tb == 1) & (ptb == 1)).sum())
    tn = int(((tb == 0) & (ptb == 0)).sum())
    fp = int(((tb == 0) & (ptb == 1)).sum())
    fn = int(((tb == 1) & (ptb == 0)).sum())
    cls = {
        "accuracy": float((pred == y).mean()),
        "auc": float(roc_auc_score(tb, p[:, 2])),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "ap": float(precision_score(y, pred, average="macro", zero_division=0)),
        "ar": float(recall_score(y, pred, average="macro")),
        "f1": float(f1_score(tb, ptb)),
        "confusion": cm.tolist(),
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": np.minimum(thr, 1e6).tolist()},
    }
    return cls, tb, p[:, 2]


def _pr(rng, ap: float) -> list[float]:
    r = np.linspace(0, 1, 101)
    return np.clip(1 - r * (1 - ap) * 1.6 + rng.normal(0, 0.01, r.size), 0, 1).tolist()


def _det_bench(seed: int, arrays: bool) -> dict:
    rng = np.random.default_rng(seed + 100)
    det = {}
    for mode in ("all_cxr", "tb_only"):
        det[mode] = {}
        for cat in ("agnostic", "active", "latent"):
            ap50 = float(rng.uniform(0.1, 0.8))
            d = {
                "ap": ap50 * float(rng.uniform(0.3, 0.5)),
                "ap50": ap50,
                "ar100": float(rng.uniform(0.3, 0.9)),
            }
            if arrays and mode == "tb_only":  # curves for one mode keep the figure count (and time) low
                p50, p75 = np.asarray(_pr(rng, ap50)), np.asarray(_pr(rng, ap50 * 0.5))
                p75 = np.minimum(p75, p50)
                ea = {"C75": p75, "C50": p50}
                ea["Loc"] = np.minimum(1, p50 + 0.1)
                ea["Sim"] = ea["Loc"]
                ea["Oth"] = ea["Loc"]
                ea["BG"] = np.minimum(1, ea["Loc"] + 0.15)
                ea["FN"] = np.ones(101)
                d["pr"] = {"iou50": p50.tolist(), "iou75": p75.tolist()}
                d["error_analysis"] = {k: v.tolist() for k, v in ea.items()}
                d["froc"] = {
                    "fppi": [0.125, 0.25, 0.5, 1, 2, 4, 8],
                    "sensitivity": sorted(rng.uniform(0.2, 0.95, 7).tolist()),
                }
            det[mode][cat] = d
    return det


def _write_dataset(root: Path, n_tb: int = 4) -> tuple[Path, list[dict]]:
    """A tiny TBX11K layout (annotations/json + imgs/tb) with boxes, for the overlays."""
    rng = np.random.default_rng(7)
    (root / "imgs" / "tb").mkdir(parents=True)
    (root / "imgs" / "health").mkdir(parents=True)
    (root / "annotations" / "json").mkdir(parents=True)
    images, anns = [], []
    for i in range(n_tb + 2):
        folder = "tb" if i < n_tb else "health"
        fn = f"{folder}/{'tb' if folder == 'tb' else 'h'}{i:04d}.png"
        arr = (rng.random((128, 128)) * 80 + 60).astype(np.uint8)
        Image.fromarray(arr).save(root / "imgs" / fn)
        images.append({"id": i + 1, "file_name": fn, "width": 128, "height": 128})
        if folder == "tb":
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": 1 + (i % 2),
                    "bbox": [20.0 + 5 * i, 30.0, 40.0, 50.0],
                    "area": 2000.0,
                    "iscrowd": 0,
                }
            )
    ann = root / "annotations" / "json" / "TBX11K_val.json"
    ann.write_text(
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
    return ann, anns


def make_run(
    d: Path,
    *,
    seed: int,
    fold: int | None = None,
    ci: bool = False,
    arrays: bool = False,
    detection: bool = True,
    metrics: bool = False,
    ann: Path | None = None,
    model_info: bool = False,
    study: bool = False,
    bench: bool = True,
) -> dict:
    d.mkdir(parents=True)
    cfg = {
        "model_name": "symformer_retinanet_r50",
        "optim": {"lr": 0.001},
        "data": {"root": "/data/TBX11K", **({"fold": fold} if fold is not None else {})},
        "out": str(d),
    }
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "provenance.json").write_text(
        json.dumps({"git_commit": "abc123", "versions": {"tbx": "0.1.0"}, "data_hash": "deadbeef"})
    )
    out: dict = {}
    if bench:
        cls, tb, ptb = _cls_bench(seed)
        out = {"schema": "tbx.bench/1", "classification": cls}
        if not arrays:
            for k in ("confusion", "roc"):
                cls.pop(k)
        if detection:
            out["detection"] = _det_bench(seed, arrays)
        if ci:
            keys = ("accuracy", "auc", "sensitivity", "specificity", "ap", "ar", "f1")
            out["ci"] = {"classification": {k: [cls[k] - 0.02, min(1.0, cls[k] + 0.015)] for k in keys}}
        (d / "bench").mkdir()
        (d / "bench" / "test.json").write_text(json.dumps(out))
        out["_tb"], out["_ptb"] = tb, ptb
    if metrics:
        rows = []
        for it in range(0, 60, 5):
            rows.append(
                {
                    "iteration": it,
                    "epoch": it // 20,
                    "stage": "det",
                    "loss_cls": 2.0 / (1 + it / 10),
                    "loss_bbox": 1.0 / (1 + it / 20),
                    "lr": 1e-3 * min(1.0, (it + 1) / 20),
                }
            )
        for it in range(0, 30, 5):
            rows.append(
                {
                    "iteration": it,
                    "epoch": it // 10,
                    "stage": "cls",
                    "loss_img": 1.1 / (1 + it / 5),
                    "lr": 1e-3,
                }
            )
        (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    if ann is not None:
        pred = d / "predictions"
        pred.mkdir()
        (pred / "manifest.json").write_text(json.dumps({"ann": str(ann), "model": "symformer_retinanet_r50"}))
        data = json.loads(ann.read_text())
        res = []
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            shift = 2 if a["image_id"] == 1 else 30  # image 1: near-perfect; others: poor
            res.append(
                {
                    "image_id": a["image_id"],
                    "category_id": a["category_id"],
                    "bbox": [x + shift, y, w, h],
                    "score": 0.9,
                }
            )
        (pred / "bbox_result.json").write_text(json.dumps(res))
        ptbs = [0.9, 0.8, 0.52, 0.7] + [
            0.85 if im["file_name"].startswith("tb/") else 0.15 for im in data["images"][4:]
        ]
        (pred / "cls_result.txt").write_text(
            "".join(f"{(1 - p) / 2:.4f} {(1 - p) / 2:.4f} {p:.4f}\n" for p in ptbs)
        )
    if model_info:
        (d / "model_info.json").write_text(
            json.dumps({"params_live": 49903377, "params_paper": 50033789, "gmacs": 59.14, "fps": 31.5})
        )
    if study:
        (d / "study_compare.json").write_text(
            json.dumps(
                {
                    "n_cases": 400,
                    "readers": [
                        {
                            "name": "R1",
                            "accuracy_types": 0.687,
                            "accuracy_3class": 0.848,
                            "sensitivity": 0.80,
                            "specificity": 0.90,
                            "ci": {"accuracy_3class": [0.81, 0.88]},
                        }
                    ],
                    "model": {
                        "accuracy_3class": 0.9,
                        "sensitivity": 0.85,
                        "specificity": 0.95,
                        "auc": 0.93,
                        "roc": {"fpr": [0, 0.1, 1], "tpr": [0, 0.8, 1]},
                    },
                }
            )
        )
    return out


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One report over: a full run, three folds of one config, and a config-only run."""
    base = tmp_path_factory.mktemp("report")
    ann, _ = _write_dataset(base / "TBX11K")
    runs = base / "runs"
    full = make_run(
        runs / "full", seed=1, ci=True, arrays=True, metrics=True, ann=ann, model_info=True, study=True
    )
    folds = [make_run(runs / f"cv_fold{k}", seed=10 + k, fold=k) for k in range(3)]
    make_run(runs / "empty", seed=99, bench=False)
    dirs = [runs / "full", *(runs / f"cv_fold{k}" for k in range(3)), runs / "empty"]
    res = make_report(dirs, base / "out", ReportConfig(overlays=3, dpi=80))
    return {"res": res, "full": full, "folds": folds, "base": base, "dirs": dirs}


def _md_rows(path: Path) -> dict[str, list[str]]:
    rows = {}
    for line in path.read_text().splitlines():
        if line.startswith("| ") and not line.startswith("| :--"):
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            rows.setdefault(
                cells[0] if cells[0] not in ("ALL", "Only TB") else f"{cells[0]}/{cells[1]}", cells
            )
    return rows


def _num(cell: str) -> float:
    return float(cell.split()[0])


# ---------------------------------------------------------------------------------------- tables
def test_classification_markdown_matches_bench(built):
    rows = _md_rows(built["res"].out / "tables" / "classification.md")
    full = built["full"]["classification"]
    row = next(v for k, v in rows.items() if k.startswith("full"))
    for i, k in enumerate(("accuracy", "auc", "sensitivity", "specificity", "ap", "ar"), 1):
        assert _num(row[i]) == pytest.approx(round(100 * full[k], 1), abs=0.051), k
        lo, hi = re.search(r"\[([\d.]+), ([\d.]+)\]", row[i]).groups()  # bootstrapped CI shown
        assert float(lo) == pytest.approx(100 * (full[k] - 0.02), abs=0.051)
        assert float(hi) == pytest.approx(100 * min(1.0, full[k] + 0.015), abs=0.051)


def test_classification_csv_and_published_rows(built):
    text = (built["res"].out / "tables" / "classification.csv").read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    full = built["full"]["classification"]
    ours = next(r for r in rows if r["run"] == "full")
    for k in ("accuracy", "auc", "sensitivity", "specificity", "ap", "ar"):
        assert float(ours[k]) == pytest.approx(100 * full[k], abs=1e-3)
        assert float(ours[f"{k}_ci_lo"]) == pytest.approx(100 * (full[k] - 0.02), abs=1e-3)
    published = [r for r in rows if r["kind"] == "published"]
    assert (
        len(published) == 8
    )  # docs/protocol.md §4.4: three TPAMI rows + P2T-Small (§2.5) + four CVPR baselines
    sym = next(r for r in published if r["method"].startswith("SymFormer w/ RetinaNet"))
    assert "(published)" in sym["method"]
    assert [float(sym[k]) for k in ("accuracy", "auc", "sensitivity", "specificity", "ap", "ar")] == [
        94.5,
        98.9,
        91.0,
        96.8,
        93.3,
        94.0,
    ]
    md = (built["res"].out / "tables" / "classification.md").read_text()
    assert "(published)†" in md and "Revisiting Computer-Aided Tuberculosis Diagnosis" in md
    assert "Rethinking Computer-aided Tuberculosis Diagnosis" in md


def test_detection_table_matches_bench(built):
    rows = list(csv.DictReader(io.StringIO((built["res"].out / "tables" / "detection.csv").read_text())))
    det = built["full"]["detection"]
    for mode, mode_h in (("all_cxr", "ALL"), ("tb_only", "Only TB")):
        ours = next(r for r in rows if r["run"] == "full" and r["data"] == mode_h)
        for cat in ("agnostic", "active", "latent"):
            assert float(ours[f"{cat}_ap50"]) == pytest.approx(100 * det[mode][cat]["ap50"], abs=1e-3)
            assert float(ours[f"{cat}_ap"]) == pytest.approx(100 * det[mode][cat]["ap"], abs=1e-3)
    md = _md_rows(built["res"].out / "tables" / "detection.md")
    pub_all = next(v for k, v in md.items() if k.startswith("ALL/SymFormer w/ RetinaNet"))
    assert [_num(c) for c in pub_all[2:]] == [68.0, 29.5, 62.0, 27.3, 13.3, 4.4]
    pub_tb = next(v for k, v in md.items() if k.startswith("Only TB/SymFormer w/ RetinaNet"))
    assert [_num(c) for c in pub_tb[2:]] == [73.4, 31.5, 67.1, 29.2, 14.7, 4.8]


def test_kfold_mean_sd_matches_numpy(built):
    rows = list(csv.DictReader(io.StringIO((built["res"].out / "tables" / "classification.csv").read_text())))
    fold_rows = [r for r in rows if r["kind"] == "folds"]
    assert len(fold_rows) == 1 and "3-fold mean ± sd" in fold_rows[0]["method"]
    for k in ("accuracy", "auc", "sensitivity", "ap"):
        vals = 100 * np.array([f["classification"][k] for f in built["folds"]])
        assert float(fold_rows[0][k]) == pytest.approx(vals.mean(), abs=1e-3)
        assert float(fold_rows[0][f"{k}_sd"]) == pytest.approx(vals.std(ddof=1), abs=1e-3)
    md = _md_rows(built["res"].out / "tables" / "classification.md")
    cell = next(v for k, v in md.items() if "fold mean" in k)[1]
    vals = 100 * np.array([f["classification"]["accuracy"] for f in built["folds"]])
    assert cell == f"{vals.mean():.1f} ± {vals.std(ddof=1):.1f}"
    det = list(csv.DictReader(io.StringIO((built["res"].out / "tables" / "detection.csv").read_text())))
    frow = next(r for r in det if r["kind"] == "folds" and r["data"] == "Only TB")
    vals = 100 * np.array([f["detection"]["tb_only"]["latent"]["ap50"] for f in built["folds"]])
    assert float(frow["latent_ap50"]) == pytest.approx(vals.mean(), abs=1e-3)
    assert float(frow["latent_ap50_sd"]) == pytest.approx(vals.std(ddof=1), abs=1e-3)


def test_fold_grouping_rules(tmp_path):
    for k in range(2):
        make_run(tmp_path / f"a_fold{k}", seed=k, fold=k, detection=False)
    make_run(tmp_path / "b_fold0", seed=5, fold=0, detection=False)
    cfg = yaml.safe_load((tmp_path / "b_fold0" / "config.yaml").read_text())
    cfg["optim"]["lr"] = 0.01  # a different config: not the same experiment
    (tmp_path / "b_fold0" / "config.yaml").write_text(yaml.safe_dump(cfg))
    # tbx train style: fold only in the run name and in per-fold annotation paths
    for k in range(2):
        d = tmp_path / f"t_fold{k}"
        d.mkdir()
        (d / "config.yaml").write_text(
            yaml.safe_dump(
                {
                    "model_name": "symformer_retinanet",
                    "data": {"root": "/d", "stage1_ann": f"folds/fold{k}/TBX11K_train_only_tb.json"},
                }
            )
        )
        (d / "bench").mkdir()
    runs = [load_run(tmp_path / n) for n in ("a_fold0", "a_fold1", "b_fold0", "t_fold0", "t_fold1")]
    assert [r.fold for r in runs] == [0, 1, 0, 0, 1] and runs[3].model == "symformer_retinanet"
    groups = fold_groups(runs)
    assert [[r.name for r in g] for g in groups] == [["a_fold0", "a_fold1"], ["t_fold0", "t_fold1"]]


def test_complexity_table(built):
    rows = list(csv.DictReader(io.StringIO((built["res"].out / "tables" / "complexity.csv").read_text())))
    ours = next(r for r in rows if r["run"] == "full")
    c = built["full"]["classification"]
    total = c["tp"] + c["tn"] + c["fp"] + c["fn"]
    for k in ("tp", "tn", "fp", "fn"):
        assert float(ours[k]) == pytest.approx(100 * c[k] / total, abs=1e-3)
        assert int(ours[f"{k}_count"]) == c[k]
    assert float(ours["f1"]) == pytest.approx(100 * c["f1"], abs=1e-3)
    assert float(ours["params_live"]) == pytest.approx(49.903377, abs=1e-3)
    assert float(ours["gmacs"]) == pytest.approx(59.14)
    assert float(ours["fps"]) == pytest.approx(31.5)
    sym = next(
        r for r in rows if r["kind"] == "published" and r["method"].startswith("SymFormer w/ RetinaNet")
    )
    # docs/protocol.md §4.2: TP 589, TN 2569, FP 86, FN 58 of 3302 → 17.8 / 77.8 / 2.6 / 1.8 %;
    # F1 89.0, FPS 24.3.
    assert [float(sym[k]) for k in ("tp", "tn", "fp", "fn", "f1", "fps")] == [
        17.8,
        77.8,
        2.6,
        1.8,
        89.0,
        24.3,
    ]


def test_screening_operating_points_bruteforce(built):
    rows = list(csv.DictReader(io.StringIO((built["res"].out / "tables" / "screening.csv").read_text())))
    ours = next(r for r in rows if r["run"] == "full")
    tb, p = built["full"]["_tb"], built["full"]["_ptb"]
    best_sens, best_spec = 0.0, 0.0
    for t in np.concatenate([np.unique(p), [np.inf]]):
        pos = p >= t
        sens, spec = (pos & (tb == 1)).sum() / (tb == 1).sum(), (~pos & (tb == 0)).sum() / (tb == 0).sum()
        if spec >= 0.70:
            best_sens = max(best_sens, sens)
        if sens >= 0.90:
            best_spec = max(best_spec, spec)
    assert float(ours["sens_at_spec70"]) == pytest.approx(100 * best_sens, abs=1e-3)
    assert float(ours["spec_at_sens90"]) == pytest.approx(100 * best_spec, abs=1e-3)


def test_operating_point_unit():
    fpr = np.array([0.0, 0.1, 0.3, 0.31, 1.0])
    tpr = np.array([0.0, 0.5, 0.8, 0.95, 1.0])
    assert operating_point(fpr, tpr, spec=0.70) == pytest.approx((0.8, 0.7))
    assert operating_point(fpr, tpr, sens=0.90) == pytest.approx((0.95, 0.69))


def test_reader_table(built):
    rows = list(csv.DictReader(io.StringIO((built["res"].out / "tables" / "readers.csv").read_text())))
    r1 = next(r for r in rows if r["reader"] == "R1")
    assert float(r1["accuracy_3class"]) == pytest.approx(84.8, abs=1e-3)
    assert (float(r1["accuracy_3class_ci_lo"]), float(r1["accuracy_3class_ci_hi"])) == (81.0, 88.0)
    model = next(r for r in rows if r["reader"] == "model on the study's 400 cases")
    assert (float(model["sensitivity"]), model["accuracy_types"]) == (85.0, "")
    rad = next(r for r in rows if r["kind"] == "published")
    assert (float(rad["accuracy_3class"]), float(rad["accuracy_types"])) == (84.8, 68.7)


def test_latex_is_sound(built, tmp_path):
    texs = sorted((built["res"].out / "tables").glob("*.tex"))
    assert {p.stem for p in texs} == {"classification", "complexity", "detection", "screening", "readers"}
    for p in texs:
        t = p.read_text()
        assert t.count(r"\begin{table}") == 1 and t.count(r"\end{table}") == 1
        assert sorted(re.findall(r"\\begin\{(\w+)\}", t)) == sorted(re.findall(r"\\end\{(\w+)\}", t))
        for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
            assert rule in t
        assert not re.search(r"(?<!\\)[_%]", t), p.name  # every _ and % escaped
        unescaped = re.sub(r"\\[{}]", "", t)  # braces balanced once escaped ones are removed
        depth = 0
        for ch in unescaped:
            depth += {"{": 1, "}": -1}.get(ch, 0)
            assert depth >= 0
        assert depth == 0, p.name
        body = t.split(r"\midrule", 1)[1].split(r"\bottomrule")[0]
        ncols = t.split(r"\begin{tabular}{", 1)[1].split("}", 1)[0]
        for line in body.splitlines():
            if line.endswith(r"\\") and "multicolumn" not in line:
                assert line.count(" & ") == len(ncols) - 1, line
    assert tex_escape("a_b 5% #1 & {x}") == r"a\_b 5\% \#1 \& \{x\}"
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed")
    doc = tmp_path / "doc.tex"
    doc.write_text(
        "\\documentclass{article}\\usepackage[utf8]{inputenc}\\usepackage{booktabs}\n"
        "\\begin{document}\n" + "".join(f"\\input{{{p}}}\n" for p in texs) + "\\end{document}\n"
    )
    r = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-2000:]


# --------------------------------------------------------------------------------------- figures
def test_figures_are_valid_images(built):
    res = built["res"]
    names = {p.name for p in res.figures}
    expected = {
        "confusion_full",
        "roc_tb",
        "pr_tb_only_full",
        "errors_tb_only_full",
        "froc_tb_only",
        "train_full",
        "overlays_full",
    }
    for stem in expected:
        assert f"{stem}.png" in names and f"{stem}.pdf" in names, stem
    for p in res.figures:
        assert p.is_file() and p.stat().st_size > 1000
        if p.suffix == ".png":
            with Image.open(p) as im:
                im.verify()
            with Image.open(p) as im:
                assert im.size[0] > 300 and im.size[1] > 200
        else:
            assert p.read_bytes()[:5] == b"%PDF-"


def test_html_is_self_contained(built):
    h = built["res"].html.read_text()
    assert h.count("data:image/png;base64,") == sum(1 for p in built["res"].figures if p.suffix == ".png")
    assert not re.search(r'src="(?!data:)', h)  # no external file references
    assert "abc123" in h and "deadbeef" in h  # provenance: commit + data hash
    assert "(published)†" in h and "symformer_retinanet_r50" in h


def test_notes_for_missing_pieces(built):
    notes = "\n".join(built["res"].notes)
    assert "empty: no bench/*.json" in notes
    assert "empty: no metrics.jsonl" in notes
    assert "cv_fold0: no predictions/" in notes
    assert "cv_fold1: no classification.roc" in notes
    assert "full: no detection.all_cxr.*.pr arrays" in notes
    assert len(built["res"].figures) == 14  # 7 figures × (png, pdf)
    assert (built["res"].out / "notes.txt").read_text().strip() == notes.strip()
    prov = json.loads((built["res"].out / "provenance.json").read_text())
    assert prov["kind"] == "tbx-report" and len(prov["runs"]) == 5
    assert all(p.exists() for p in built["res"].files)


def test_overlay_score_hand_computed():
    gt = np.array([[0, 0, 10, 10], [20, 20, 10, 10]], float)
    pred = np.array([[5, 0, 10, 10], [20, 20, 10, 10], [0, 0, 10, 10]], float)
    scores = np.array([0.9, 0.9, 0.1])  # the exact match of box 1 is below the score threshold
    # box 1: best IoU 50/150 = 1/3 (the shifted box); box 2: 1.0
    assert overlay_score(gt, pred, scores) == pytest.approx((1 / 3 + 1.0) / 2)
    assert overlay_score(gt, pred, np.zeros(3)) == 0.0


def test_global_steps_continue_across_stages():
    rows = [{"iteration": i, "stage": 1} for i in (0, 10, 20)]
    rows += [{"iteration": i, "stage": 2} for i in (0, 10)]
    x, bounds = _global_steps(rows)
    assert x.tolist() == [0, 10, 20, 21, 31]
    assert bounds == [(21.0, "2")]


# ---------------------------------------------------------------------------------------- errors
def test_not_a_run_is_an_error(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(TbxError, match="not a run directory"):
        make_report([tmp_path / "x"], tmp_path / "out", ReportConfig(figures=False))
    with pytest.raises(TbxError, match="not found"):
        load_run(tmp_path / "missing")


def test_bad_inputs_are_tbx_errors(tmp_path):
    make_run(tmp_path / "r", seed=0, detection=False)
    (tmp_path / "r" / "metrics.jsonl").write_text('{"iteration": 0, "loss": 1}\n{bad\n{"iteration": 2}\n')
    with pytest.raises(TbxError, match=r"metrics.jsonl:2"):
        load_run(tmp_path / "r")
    (tmp_path / "r" / "metrics.jsonl").write_text('{"iteration": 0, "loss": 1}\n{"iterat')  # still writing
    assert "truncated last line" in " ".join(load_run(tmp_path / "r").notes)
    (tmp_path / "r" / "bench" / "test.json").write_text("{\n  oops")
    with pytest.raises(TbxError, match=r"test.json:2"):
        load_run(tmp_path / "r")
    with pytest.raises(TbxError, match="unknown report format"):
        ReportConfig(formats="md,docx")
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    (tmp_path / "r" / "bench" / "test.json").write_text("{}")
    with pytest.raises(TbxError, match="not an earlier tbx report"):
        make_report([tmp_path / "r"], other, ReportConfig(figures=False))
    assert (other / "thesis.tex").read_text() == "precious"


def test_cli_report_reference_none_and_rerun(tmp_path, cli):
    make_run(tmp_path / "r", seed=3)
    out = tmp_path / "rep"
    for _ in range(2):  # a second run replaces the earlier report
        code, stdout, err = cli(
            "report",
            tmp_path / "r",
            "--out",
            out,
            "--format",
            "md,csv",
            "--reference",
            "none",
            "--no-figures",
        )
        assert code == 0, err
    assert "report of 1 run(s)" in stdout
    assert sorted(p.name for p in (out / "tables").iterdir()) == sorted(
        f"{t}.{e}" for t in ("classification", "complexity", "detection", "screening") for e in ("md", "csv")
    )
    assert "(published)" not in (out / "tables" / "classification.md").read_text()
    assert not (out / "report.html").exists() and (out / "report.md").is_file()
    code, _, err = cli("report", tmp_path / "nope", "--out", tmp_path / "x")
    assert code == 2 and "run directory not found" in err


def test_study_option_and_bench_schema(tmp_path):
    make_run(tmp_path / "r", seed=4, detection=False)
    b = json.loads((tmp_path / "r" / "bench" / "test.json").read_text())
    z_det = tmp_path / "r" / "bench" / "z_det.json"
    for bad, match in (
        ({"detection": {"all-cxr": {"agnostic": {"ap50": 0.5}}}}, "unknown detection mode"),
        ({"detection": {"all_cxr": {"category_agnostic": {}}}}, "unknown detection row"),
        ({"ci": {"classification": {"auc": {"lo": 0.1, "hi": 0.2}}}}, "not an interval"),
    ):
        z_det.write_text(json.dumps({"schema": "tbx.bench/1", **bad}))
        with pytest.raises(TbxError, match=match):
            load_run(tmp_path / "r")
    z_det.write_text(json.dumps({"detection": {"all_cxr": {"agnostic": {"ap50": 0.5}}}}))
    with pytest.raises(TbxError, match="schema None"):
        load_run(tmp_path / "r")
    z_det.write_text(
        json.dumps(
            {"schema": "tbx.bench/1", "detection": {"all_cxr": {"agnostic": {"ap50": 0.5, "ap": 0.25}}}}
        )
    )
    sdir = tmp_path / "study"
    sdir.mkdir()
    (sdir / "study_compare.json").write_text(
        json.dumps(
            {
                "readers": [
                    {
                        "name": "Dr X",
                        "accuracy_types": 0.6,
                        "accuracy_3class": 0.8,
                        "sensitivity": 0.7,
                        "specificity": 0.95,
                    }
                ]
            }
        )
    )
    res = make_report(
        [tmp_path / "r"], tmp_path / "out", ReportConfig(study=sdir, formats="csv", figures=False)
    )
    det = list(csv.DictReader(io.StringIO((res.out / "tables" / "detection.csv").read_text())))
    ours = next(r for r in det if r["kind"] == "ours")
    assert (ours["data"], float(ours["agnostic_ap50"]), ours["active_ap50"]) == ("ALL", 50.0, "")
    rd = list(csv.DictReader(io.StringIO((res.out / "tables" / "readers.csv").read_text())))
    assert float(next(r for r in rd if r["reader"] == "Dr X")["specificity"]) == pytest.approx(95.0)
    cl = list(csv.DictReader(io.StringIO((res.out / "tables" / "classification.csv").read_text())))
    assert float(next(r for r in cl if r["kind"] == "ours")["accuracy"]) == pytest.approx(
        100 * b["classification"]["accuracy"], abs=1e-3
    )
    with pytest.raises(TbxError, match="no study_compare.json"):
        make_report([tmp_path / "r"], tmp_path / "out2", ReportConfig(study=tmp_path, figures=False))


def test_published_data_is_spec_4_4():
    sym = pub.PUBLISHED_ROWS[0]
    assert sym.classification == {
        "accuracy": 94.5,
        "auc": 98.9,
        "sensitivity": 91.0,
        "specificity": 96.8,
        "ap": 93.3,
        "ar": 94.0,
    }
    assert sym.detection[("tb_only", "latent")] == (14.7, 4.8)
    assert sym.fps == 24.3
    assert pub.PUBLISHED_RADIOLOGIST["accuracy_3class"] == 84.8


def test_end_to_end_with_tbx_bench(tmp_path):
    """Real `tbx bench` output (library evaluate + write_result) → report tables carry its numbers."""
    protocol = pytest.importorskip("tbx.bench.protocol")
    ann, _ = _write_dataset(tmp_path / "TBX11K", n_tb=8)
    run = tmp_path / "runs" / "r1"
    make_run(run, seed=1, bench=False, ann=ann)
    cfg = protocol.BenchConfig(bootstrap=20)
    res = protocol.evaluate(ann, run / "predictions", cfg)
    protocol.write_result(res, run / "bench" / "test.json", cfg)  # also writes bench/provenance.json
    rep = make_report([run], tmp_path / "out", ReportConfig(formats="csv", figures=False))
    assert not any("disagree" in n for n in rep.notes)
    cl = next(
        r
        for r in csv.DictReader(io.StringIO((rep.out / "tables" / "classification.csv").read_text()))
        if r["kind"] == "ours"
    )
    for k in ("accuracy", "auc", "sensitivity", "specificity", "ap", "ar"):
        assert float(cl[k]) == pytest.approx(100 * res["classification"][k], abs=1e-3)
        assert float(cl[f"{k}_ci_lo"]) == pytest.approx(100 * res["ci"]["classification"][k][0], abs=1e-3)
    det = list(csv.DictReader(io.StringIO((rep.out / "tables" / "detection.csv").read_text())))
    for mode, mode_h in (("all_cxr", "ALL"), ("tb_only", "Only TB")):
        row = next(r for r in det if r["kind"] == "ours" and r["data"] == mode_h)
        for cat in ("agnostic", "active", "latent"):
            want = 100 * res["detection"][mode][cat]["ap50"]
            assert float(row[f"{cat}_ap50"]) == pytest.approx(want, abs=1e-3)
    sc = next(r for r in csv.DictReader(io.StringIO((rep.out / "tables" / "screening.csv").read_text())))
    ops = res["operating_points"]
    want = 100 * ops["sensitivity_at_specificity"]["sensitivity"]
    assert float(sc["sens_at_spec70"]) == pytest.approx(want)


def test_malformed_curves_cost_a_figure_not_the_report(tmp_path):
    make_run(tmp_path / "r", seed=2, detection=False)
    b = json.loads((tmp_path / "r" / "bench" / "test.json").read_text())
    b["classification"]["confusion"] = [[1, 2], [3, 4]]  # not 3×3
    b["classification"]["roc"] = {"fpr": [0.0, 0.5, 1.0], "tpr": [0.0, 1.0]}  # lengths differ
    bad_froc = {"fppi": [1, 2], "sensitivity": [0.5]}
    b["detection"] = {"tb_only": {"agnostic": {"ap50": 0.4, "ap": 0.2, "froc": bad_froc}}}
    (tmp_path / "r" / "bench" / "test.json").write_text(json.dumps(b))
    res = make_report([tmp_path / "r"], tmp_path / "out", ReportConfig(formats="md", overlays=0))
    notes = "\n".join(res.notes)
    assert "not 3×3" in notes and "no classification.roc arrays" in notes and "froc in any run" in notes
    assert res.figures == []
    assert "40.0" in (res.out / "tables" / "detection.md").read_text()


def test_error_curves_accept_bench_and_contract_shapes():
    bench_style = {
        "analysis": {"C75": {"ap": 0.2, "precision": [0.3, 0.1]}, "FN": {"ap": 1.0, "precision": [1, 1]}}
    }
    out = _error_curves(bench_style)
    assert list(out) == ["C75", "FN"] and out["C75"].tolist() == [0.3, 0.1]
    assert _error_curves({"error_analysis": {"C75": 0.2, "C50": 0.4}}) == {"C75": 0.2, "C50": 0.4}
    assert _error_curves({}) == {}
