"""The body of ``tbx bench`` without typer: printing, the config, one run (docs/protocol.md §4).

:mod:`tbx.cli.bench` wraps it in the typer command; :mod:`tbx.cli.entry` calls :func:`run_bench`
directly for a plain ``tbx bench --gt … --pred …`` line, so scoring starts without importing typer
(and pydantic under it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tbx.bench.protocol import BenchConfig, evaluate, write_result
from tbx.bench.schema import DET_ROW_LABELS

MODE_NAMES = {"all_cxr": "ALL (all-cxr)", "tb_only": "Only TB (tb-only)"}


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}"


def _with_ci(x: Any, ci: Any) -> str:
    s = _pct(x)
    if isinstance(ci, list) and len(ci) == 2 and ci[0] is not None:
        s += f" [{_pct(ci[0])}, {_pct(ci[1])}]"
    return s


def _get(tree: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


def print_result(res: dict[str, Any], console: Console) -> None:
    ci = res.get("ci")
    cls = res.get("classification")
    if cls:
        t = Table(
            title=f"Image classification — {cls['n_images']} images, {cls['n_tb']} TB "
            "(%, docs/protocol.md §4.2)"
        )
        keys = [
            ("accuracy", "Accuracy"),
            ("auc", "AUC"),
            ("sensitivity", "Sensitivity"),
            ("specificity", "Specificity"),
            ("ap", "AP"),
            ("ar", "AR"),
            ("f1", "F1"),
        ]
        for _, name in keys:
            t.add_column(name, justify="right")
        t.add_row(*[_with_ci(cls[k], _get(ci, "classification", k)) for k, _ in keys])
        console.print(t)
        d = cls.get("auc_delong")
        if d and d.get("ci") and d["ci"][0] is not None:
            console.print(f"AUC DeLong 95 % CI: [{_pct(d['ci'][0])}, {_pct(d['ci'][1])}]")
        c = Table(title="Confusion matrix (rows: truth, columns: prediction)")
        c.add_column("")
        for n in ("healthy", "sick", "TB"):
            c.add_column(n, justify="right")
        for n, row in zip(("healthy", "sick", "TB"), cls["confusion"]):
            c.add_row(n, *[str(v) for v in row])
        console.print(c)
        console.print(
            "TB vs non-TB: "
            + ", ".join(
                f"{k.upper()} {cls[k]} ({_pct(cls[k + '_share'])} %)" for k in ("tp", "fn", "fp", "tn")
            )
        )
    ops = res.get("operating_points")
    if ops:
        o = Table(title="Screening operating points (WHO triage TPP: sens ≥ 90 %, spec ≥ 70 %)")
        for col in ("Constraint", "Sensitivity", "Specificity", "Threshold on p(TB)"):
            o.add_column(col, justify="right")
        a, b = ops["sensitivity_at_specificity"], ops["specificity_at_sensitivity"]
        o.add_row(
            f"spec ≥ {_pct(a['target_specificity'])} %",
            _with_ci(
                a["sensitivity"], _get(ci, "operating_points", "sensitivity_at_specificity", "sensitivity")
            ),
            _pct(a["specificity"]),
            "–" if a["threshold"] is None else f"{a['threshold']:.4g}",
        )
        o.add_row(
            f"sens ≥ {_pct(b['target_sensitivity'])} %",
            _pct(b["sensitivity"]),
            _with_ci(
                b["specificity"], _get(ci, "operating_points", "specificity_at_sensitivity", "specificity")
            ),
            "–" if b["threshold"] is None else f"{b['threshold']:.4g}",
        )
        console.print(o)
    det = res.get("detection")
    if det:
        t = Table(
            title="TB area detection (%, docs/protocol.md §4.3)",
            caption="AP = COCO AP@[.5:.95]; AR@100 = COCO AR; FROC = mean sensitivity at "
            "1/8, 1/4, 1/2, 1, 2, 4, 8 FP per image (IoU ≥ .5)",
        )
        for col in ("Data", "Target", "AP50", "AP", "AR@100", "FROC"):
            t.add_column(col, justify="right" if col not in ("Data", "Target") else "left")
        for mode, rows in det.items():
            for i, (row, r) in enumerate(rows.items()):
                t.add_row(
                    MODE_NAMES.get(mode, mode) if i == 0 else "",
                    DET_ROW_LABELS.get(row, row),
                    _with_ci(r["ap50"], _get(ci, "detection", mode, row, "ap50")),
                    _with_ci(r["ap"], _get(ci, "detection", mode, row, "ap")),
                    _with_ci(r["ar100"], _get(ci, "detection", mode, row, "ar100")),
                    _with_ci(r["froc"]["mean"], _get(ci, "detection", mode, row, "froc", "mean")),
                )
        console.print(t)
    if ci:
        console.print(
            f"[{int(100 * ci['level'])} % CIs: {ci['method']}, {ci['n_bootstrap']} resamples, "
            f"seed {ci['seed']}]"
        )
    for n in res.get("notes", []):
        console.print(f"note: {n}")


def print_compare(res: dict[str, Any], console: Console) -> None:
    ci = res["ci"]
    t = Table(title=f"A − B (paired; A = {res['a']}, B = {res['b']}); percentage points")
    for col in ("Metric", "A", "B", "A − B", f"{int(100 * ci['level'])} % CI"):
        t.add_column(col, justify="right" if col != "Metric" else "left")

    def walk(a, b, d, c, name):
        if isinstance(d, dict):
            for k in d:
                walk(
                    a.get(k),
                    b.get(k),
                    d[k],
                    c.get(k) if isinstance(c, dict) else None,
                    f"{name}.{k}" if name else k,
                )
        elif isinstance(d, list):
            for i, v in enumerate(d):
                walk(a[i], b[i], v, c[i] if isinstance(c, list) else None, f"{name}[{i}]")
        else:
            rng = "–" if not c or c[0] is None else f"[{100 * c[0]:+.1f}, {100 * c[1]:+.1f}]"
            t.add_row(name, _pct(a), _pct(b), "–" if d is None else f"{100 * d:+.1f}", rng)

    walk(res["metrics_a"], res["metrics_b"], res["diff"], ci, "")
    console.print(t)
    dl = res.get("delong")
    if dl and dl.get("p") is not None:
        console.print(
            f"DeLong test, AUC(A) − AUC(B) = {100 * dl['diff']:+.2f} pp "
            f"(95 % CI [{100 * dl['ci'][0]:+.2f}, {100 * dl['ci'][1]:+.2f}]), "
            f"z = {dl['z']:.3f}, p = {dl['p']:.4g}"
        )
    for n in res.get("notes", []):
        console.print(f"note: {n}")


def make_console() -> Console:
    # wide tables when the output is a file or a pipe (CIs make rows long)
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


def make_config(mode: str, bootstrap: int, seed: int, keep_uncertain: bool) -> BenchConfig:
    cfg = BenchConfig(
        mode=mode,
        bootstrap=bootstrap,
        seed=seed,  # type: ignore[arg-type]
        keep_uncertain=keep_uncertain,
    )
    cfg.check()
    return cfg


def run_bench(
    gt: Path,
    pred: Path,
    mode: str = "both",
    json_out: Path | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    keep_uncertain: bool = False,
    save_operating_points: Path | None = None,
) -> None:
    """Score ``pred`` against ``gt``, print the tables, write the JSON / operating points if asked."""
    cfg = make_config(mode, bootstrap, seed, keep_uncertain)
    console = make_console()
    res = evaluate(gt, pred, cfg)
    print_result(res, console)
    if json_out is not None:
        write_result(res, json_out, cfg)
        console.print(f"wrote {json_out} (+ {json_out.stem}.provenance.json)")
    if save_operating_points is not None:
        from tbx.deploy.operating_points import save_from_bench_result

        console.print(f"wrote {save_from_bench_result(save_operating_points, res, gt)}")
