"""``tbx report``: the paper's tables and figures from one or many run directories.

The report reads **only the files of the run directories** (ARCHITECTURE.md "Runs"), so it works on
runs made on another machine.  Everything that is missing in a run is skipped with a note (listed in
the report and in :attr:`ReportResult.notes`), never a crash.

Run directory contract
======================
``runs/<name>/`` may hold (all optional, but a run needs ``config.yaml`` or ``bench/``):

``config.yaml``
    The training config.  The model name is its ``model_name`` (tbx train), else
    ``predictions/manifest.json``'s ``model`` (tbx predict).  The fold index is ``data.fold``, else
    a run-directory name ending in ``_fold{k}``.
``provenance.json``
    Shown verbatim in ``report.html`` (commit, versions, data hash when present).
``metrics.jsonl``
    One JSON object per line: ``iteration``, ``epoch``, ``stage``, loss terms (keys starting with
    ``loss``), ``lr``, … ; rows with a ``kind`` other than ``train`` (``val``, ``stage_end``) are not
    plotted.  When ``iteration`` restarts with a new stage, the curves continue on a global step
    axis.  A truncated last line (run still writing) is skipped with a note.
``predictions/``
    ``cls_result.txt`` (docs/protocol.md §4.1, one ``p(healthy) p(sick) p(TB)`` line per image in the order of
    the annotation file's ``images``), ``bbox_result.json`` (COCO results), ``manifest.json`` with at
    least ``ann`` (or ``annotations``: the annotation JSON used for prediction) and ``model``;
    ``data_root`` when present locates the images, else the root is the parent of
    ``annotations/json/``.
``bench/*.json``
    Output of ``tbx bench --json``, schema ``tbx.bench/1`` (:mod:`tbx.bench.schema`; another schema,
    mode or row name is an error; all fractions in [0, 1])::

        classification: accuracy auc sensitivity specificity ap ar f1 confusion (3×3, rows = truth
                        healthy/sick/TB) tp tn fp fn roc: {fpr, tpr, thresholds}
                        auc_delong: {ci} (optional)
        detection: {all_cxr, tb_only}: {agnostic, active, latent}:
                   ap ap50 ar100 froc froc_curve? pr: {recall?, iou50: [101 precisions], iou75: [...]}
                   error_analysis (or analysis): {C75, C50, Loc, Sim?, Oth?, BG, FN}
        operating_points: {sensitivity_at_specificity: {target_specificity, sensitivity, specificity},
                           specificity_at_sensitivity: {target_sensitivity, specificity, sensitivity}}
        ci: same paths as above, each value [lo, hi] — 95 % bootstrap intervals

    ``bench/provenance.json`` and JSONs without a classification/detection block (e.g. ``tbx bench
    compare`` output) are ignored with a note; the bench's own ``notes`` are carried over.
    The screening points (sensitivity at specificity ≥ .70, specificity at sensitivity ≥ .90) are
    taken from ``operating_points`` when its targets are these, else read off the ROC arrays.

    Several bench files are merged key by key in file-name order; a disagreement is noted and the
    later file wins.  ``froc`` is ``{fppi: [...], sensitivity: [...]}``.
    ``error_analysis`` values are 101-point precision arrays (drawn as the stacked areas of the COCO
    analyze figure), ``{ap, precision}`` objects, or AP scalars (drawn as a stacked bar).
``model_info.json``
    ``tbx models info --json``: ``params_live``, ``params_paper``, ``gmacs``, optional ``fps``.
``study_compare.json``
    ``tbx study compare`` output (``readers[].{name, accuracy_types, accuracy_3class, sensitivity,
    specificity}``), in the run directory, in ``<run>/study/``, or given by ``--study DIR``.

Folds: runs whose configs are equal once the fold index and output/name keys are removed form a
k-fold group and get an extra "mean ± sd" row (sample standard deviation, ddof = 1).

Outputs (all written into a temporary directory moved into place at the end; an existing OUT is
replaced only when it is empty or an earlier report):
``tables/<name>.{md,tex,csv}``, ``report.md``, ``report.html`` (self-contained, figures as base64
PNG), ``figures/*.{png,pdf}``, ``notes.txt`` and ``provenance.json``.

Overlay selection (``--overlays N``, per run with predictions and a reachable dataset): among TB
images with ground-truth boxes, each image gets the score *q* = mean over its ground-truth boxes of
the best IoU with a prediction whose score ≥ 0.3; the *best* are the highest q, the *worst* the
lowest q (ties: more ground-truth boxes first); the *most uncertain* are the images whose p(TB)
(``cls_result.txt``) is closest to 0.5.  N is split evenly over the three groups (at least one each).
"""

from tbx.bench.report.build import build_tables, make_report
from tbx.bench.report.config import ReportConfig, ReportResult
from tbx.bench.report.runs import Run, load_run

__all__ = ["ReportConfig", "ReportResult", "Run", "build_tables", "load_run", "make_report"]
