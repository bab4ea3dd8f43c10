"""``tbx demo``: the whole pipeline on synthetic data, end to end, into one folder.

    synth (hospital-style DICOM export) → build → validate → stats → split (+ 4 folds)
    → train tiny SymFormer (both stages) → predict → bench (all-cxr + tb-only, bootstrap CIs)
    → model info → explain (Grad-CAM on the test TB images) → deploy (operating points from the
    test split, ONNX export, screening of a fresh cohort of new patients with onnxruntime)
    → reading study (simulated reader, clearly labelled) → report

Every step calls the same library function as its CLI command, so the demo is also the
integration test of the toolkit.  The predictions come from a real (tiny, CPU) training run — no
oracle.  Output layout (``OUT`` = ``runs/demo`` for ``make demo``)::

    OUT/raw/                 synthetic hospital export (DICOM + VOC XML + manifest.csv)
    OUT/TBX11K/              the built TBX11K layout (imgs/, annotations/, lists/, reports)
    OUT/checks/              validation.json, stats.json
    OUT/run/                 the training run (config.yaml, metrics.jsonl, checkpoints,
                             predictions/, bench/, model_info.json, explain/gradcam/,
                             operating_points.json)
    OUT/deploy/              model.onnx, new_patients/ (a second export: patients the model never
                             saw), screen/ (tbx screen's outputs), screening_check.json (the
                             decisions scored against the new patients' labels)
    OUT/study/               reading study (cases, key, HTML form, simulated reads, comparison)
    OUT/report/              tables, figures, report.html
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tbx.errors import TbxError
from tbx.io import atomic_write_json, atomic_write_text, check_replaceable, mark_output

MARKER = ".tbx-demo"
N_STEPS = 13


# The demo's stage II sees ~360 images (the benchmark's 1,330), so it runs 10 epochs at backbone
# lr × 0.3 instead of the preset's 4 at × 0.2.  TB is 37 % of the demo's train+val (TBX11K's: 9.5 %),
# so the paper's TB loss weight 4 — set for TBX11K's TB share — would make the arg-max say "TB" for
# most healthy CXRs; equal weights give the demo the paper's balance (docs/differences.md §D.13;
# figures: benchmarks/RESULTS.md, "tbx demo").
DEMO_OVERRIDES = (
    "stage2.epochs=10",
    "stage2.lr_steps=[8]",
    "stage2.backbone_lr_mult=0.3",
    "model.cls_loss_weights=[1,1,1]",
)


@dataclass
class DemoConfig:
    """Size of the synthetic dataset and of the training run (defaults fit ~15 CPU minutes)."""

    n_healthy: int = 150
    n_sick: int = 150
    n_active: int = 100
    n_latent: int = 40
    n_both: int = 20
    n_uncertain: int = 4
    seed: int = 0
    raw_width: tuple[int, int] = (640, 960)  # original-resolution range of the export (px)
    preset: str = "tiny"
    overrides: list[str] = field(default_factory=lambda: list(DEMO_OVERRIDES))  # --set for training
    workers: int = 2
    bootstrap: int = 200
    n_new_patients: int = 60  # the fresh cohort screened by the deploy step (a third each class)
    n_explain: int = 12  # test TB images explained (Grad-CAM)


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():  # demo folders of earlier versions carry only MARKER
            check_replaceable(out, "demo")
        shutil.rmtree(out)
    mark_output(out, "demo")
    (out / MARKER).write_text("written by `tbx demo`; the next demo run replaces this folder\n")


def _study_sizes(test_records) -> dict[str, object]:
    """A study on half of each test stratum (the paper's 400-case study needs a bigger test set)."""
    c = Counter((r.label, r.tb_type) for r in test_records)
    half = lambda n: max(1, n // 2) if n else 0  # noqa: E731
    mix = [half(c[("tb", t)]) for t in ("active", "latent", "active+latent", "uncertain")]
    return {
        "n_healthy": half(c[("healthy", "none")]),
        "n_sick": half(c[("sick", "none")]),
        "n_tb": sum(mix),
        "tb_mix": ":".join(map(str, mix)),
    }


def _new_cohort(n: int) -> dict[str, int]:
    """Class counts of the fresh cohort: a third healthy, a third sick, a third TB (3:1:1 active,
    latent, both — about the demo's own mix)."""
    tb = n - 2 * (n // 3)
    latent = max(1, tb // 5)
    both = max(1, tb // 5) if tb >= 3 else 0
    return {
        "n_healthy": n // 3,
        "n_sick": n // 3,
        "n_active": tb - latent - both,
        "n_latent": latent,
        "n_both": both,
        "n_uncertain": 0,
    }


def _deploy(
    out: Path, run: Path, bench: dict, ann: Path, cfg: DemoConfig, say: Callable[[str], None]
) -> dict[str, Path]:
    """Operating points picked on the test split (data the model never trained on), the ONNX
    export (it carries them), and ``tbx screen`` of a second synthetic export — new patients —
    with onnxruntime; the screening decisions are then scored against that cohort's labels."""
    import csv

    from tbx.bench.stats import wilson_ci
    from tbx.data.synth import SynthConfig, synthesize
    from tbx.deploy.export import export_onnx
    from tbx.deploy.operating_points import save_from_bench_result
    from tbx.deploy.screen import PREDICTIONS, ScreenConfig, screen

    mark_output(out, "demo")
    points = save_from_bench_result(run, bench, ann)
    onnx = export_onnx(run, out / "model.onnx")
    cohort = out / "new_patients"
    synthesize(
        cohort,
        SynthConfig(
            **_new_cohort(cfg.n_new_patients),
            seed=cfg.seed + 1,  # other patients than the training and test data
            raw=True,
            dicom=True,
            raw_width=cfg.raw_width,
            workers=cfg.workers,
        ),
    )
    res = screen(
        onnx, [cohort / "exports"], out / "screen", ScreenConfig(workers=cfg.workers, progress=False)
    )
    with (cohort / "manifest.csv").open(newline="") as f:
        truth = {row["file"]: row["label"] == "tb" for row in csv.DictReader(f)}
    with (res.out / PREDICTIONS).open(newline="") as f:
        decided = {
            Path(r["source"]).relative_to(cohort).as_posix(): r["decision"] == "TB" for r in csv.DictReader(f)
        }
    pairs = [(truth[k], d) for k, d in decided.items()]
    n_tb = sum(t for t, _ in pairs)
    tp = sum(t and d for t, d in pairs)
    tn = sum(not t and not d for t, d in pairs)
    sens_ci, spec_ci = wilson_ci(tp, n_tb), wilson_ci(tn, len(pairs) - n_tb)
    check = {
        "threshold": {
            "name": res.threshold.name,
            "value": res.threshold.value,
            "origin": res.threshold.origin,
        },
        "operating_points": str(points),
        "backend": res.backend,
        "n_patients": len(pairs),
        "n_tb": n_tb,
        "n_errors": res.n_errors,
        "sensitivity": tp / n_tb if n_tb else None,
        "specificity": tn / (len(pairs) - n_tb) if len(pairs) > n_tb else None,
        "sensitivity_ci95": list(sens_ci),  # Wilson score intervals
        "specificity_ci95": list(spec_ci),
        "note": "synthetic CXRs of patients outside the training and test data, screened at the "
        "operating point picked on the test split",
    }
    atomic_write_json(out / "screening_check.json", check)

    def text(v: float | None, ci: tuple[float | None, float | None]) -> str:
        return "–" if v is None else f"{v:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"

    say(
        f"      {len(pairs)} new patients screened ({res.backend}, threshold {res.threshold.name}"
        f" = {res.threshold.column}): sensitivity {text(check['sensitivity'], sens_ci)}, "
        f"specificity {text(check['specificity'], spec_ci)} (95 % Wilson)"
    )
    return {
        "operating points": points,
        "onnx model": onnx,
        "screening": res.out / PREDICTIONS,
        "screening check": out / "screening_check.json",
    }


def run_demo(
    out: str | Path, cfg: DemoConfig | None = None, say: Callable[[str], None] = print
) -> dict[str, Path]:
    """Run every step; returns the main outputs by name."""
    from tbx.bench.protocol import BenchConfig, evaluate, write_result
    from tbx.bench.report import ReportConfig, make_report
    from tbx.bench.study import StudyConfig, run_compare, sample_study, simulate_reader, write_sheet
    from tbx.data.build import BuildConfig, build_dataset
    from tbx.data.layout import ANN_JSON, all_json_name, tbx_json_name
    from tbx.data.split import SplitConfig, run_split
    from tbx.data.stats import stats_of
    from tbx.data.synth import SynthConfig, synthesize
    from tbx.data.validate import validate_dataset
    from tbx.engine.predict import predict
    from tbx.engine.schedule import load_train_config
    from tbx.engine.trainer import train
    from tbx.explain.run import explain
    from tbx.models.info import model_info
    from tbx.provenance import write_provenance

    cfg = cfg or DemoConfig()
    out = Path(out)
    _prepare(out)
    write_provenance(out, cfg, cfg.seed)
    outputs: dict[str, Path] = {}
    t_start = time.perf_counter()

    def step(n: int, title: str) -> None:
        say(f"[{n}/{N_STEPS}] {title}  (t = {time.perf_counter() - t_start:.0f} s)")

    step(1, "synthesise a hospital-style DICOM export (original resolution, fake PHI in headers)")
    raw = out / "raw"
    synthesize(
        raw,
        SynthConfig(
            n_healthy=cfg.n_healthy,
            n_sick=cfg.n_sick,
            n_active=cfg.n_active,
            n_latent=cfg.n_latent,
            n_both=cfg.n_both,
            n_uncertain=cfg.n_uncertain,
            seed=cfg.seed,
            raw=True,
            dicom=True,
            raw_width=cfg.raw_width,
            workers=cfg.workers,
        ),
    )
    outputs["raw export"] = raw

    step(2, "build the TBX11K layout (512×512 PNGs, official JSONs/lists, no PHI)")
    root = out / "TBX11K"
    report = build_dataset(raw, root, BuildConfig(workers=cfg.workers, seed=cfg.seed))
    say(f"      {report.n_images} images; {len(report.duplicates)} duplicate(s) dropped")
    outputs["dataset"] = root

    step(3, "validate the layout")
    checks = out / "checks"
    val = validate_dataset(root)
    atomic_write_json(checks / "validation.json", val.to_dict())
    say(f"      {len(val.errors)} error(s), {len(val.warnings)} warning(s)")
    if val.errors:
        raise TbxError(
            f"the built dataset failed validation: {val.errors[0].message}", checks / "validation.json"
        )
    outputs["validation"] = checks / "validation.json"

    step(4, "dataset statistics (docs/dataset.md §1.2 table)")
    atomic_write_json(checks / "stats.json", stats_of(root))
    outputs["stats"] = checks / "stats.json"

    step(5, "split 3:2:1 (TB) / 15:4:6 (non-TB), uncertain TB → test, 4 folds of train+val")
    result = run_split(root, SplitConfig(ratio="3:2:1", seed=cfg.seed, folds=4), force=True)
    outputs["split report"] = root / "split_report.json"
    test_records = [r for r in result.plan.records if r.split == "test"]

    step(6, f"train SymFormer (preset '{cfg.preset}', both stages, CPU)")
    run = out / "run"
    tcfg = load_train_config("symformer", cfg.preset, list(cfg.overrides))
    tcfg.data.root = str(root)
    tcfg.seed = cfg.seed
    train(tcfg, run, stage="both")
    outputs["training run"] = run

    step(7, "predict the test split (official cls_result.txt + bbox_result.json)")
    ann = root / ANN_JSON / all_json_name("test")
    preds = predict(run, root, ann, run / "predictions", workers=cfg.workers)
    outputs["predictions"] = preds

    step(8, f"benchmark (docs/protocol.md §4: all-cxr + tb-only, {cfg.bootstrap} bootstrap resamples)")
    bcfg = BenchConfig(mode="both", bootstrap=cfg.bootstrap, seed=cfg.seed)
    bench = evaluate(ann, preds, bcfg)
    outputs["bench"] = write_result(bench, run / "bench" / "all_test.json", bcfg)
    c = bench["classification"]
    det = bench["detection"]["tb_only"]["agnostic"]
    say(
        f"      accuracy {c['accuracy']:.3f}  AUC {c['auc']:.3f}  sensitivity {c['sensitivity']:.3f}"
        f"  specificity {c['specificity']:.3f}  tb-only AP50 {det['ap50']:.3f}"
    )

    step(9, "model size and cost of the trained model (params, MACs, CPU latency)")
    info = model_info(tcfg.model_name, tcfg.model, latency_runs=3)  # random weights (pretrained none)
    atomic_write_json(run / "model_info.json", info)
    outputs["model info"] = run / "model_info.json"

    step(10, f"explain: Grad-CAM on {cfg.n_explain} test TB images (energy in the boxes, pointing game)")
    outputs["explain"] = explain(
        run,
        run / "explain" / "gradcam",
        data_root=root,
        ann=root / ANN_JSON / tbx_json_name("test", only_tb=True),
        method="gradcam",
        limit=cfg.n_explain,
        workers=cfg.workers,
        progress=False,
    )

    step(11, "deploy: operating points (test split) → ONNX → screen new patients with onnxruntime")
    outputs.update(_deploy(out / "deploy", run, bench, ann, cfg, say))

    step(12, "reading study: sample cases, HTML form, a SIMULATED reader, compare with the model")
    study = out / "study"
    sample_study(root, study, StudyConfig(split="test", seed=cfg.seed, **_study_sizes(test_records)))
    write_sheet(study)
    reads = simulate_reader(study, seed=cfg.seed)
    run_compare(study, [reads], pred=preds)
    outputs["study"] = study

    step(13, "report (tables, figures, report.html)")
    rep = make_report([run], out / "report", ReportConfig(study=study))
    outputs["report"] = rep.html
    say(f"done in {time.perf_counter() - t_start:.0f} s")
    atomic_write_text(out / "outputs.txt", "".join(f"{k}: {v}\n" for k, v in outputs.items()))
    return outputs
