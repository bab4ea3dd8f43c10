"""The error catalogue (issue 21): bad inputs and faults across every command, as a new user makes
them.  Each case must end in exit 2 with a single line of at most 300 characters and no traceback,
leave every input tree byte-identical (hash of the tree before/after) and leave no partial output
(the case's output path absent or unchanged, no temporary file or ``*.partial`` folder anywhere).

The fixtures (a synthetic dataset, a raw export, a trained tiny run, predictions, a study and
some deliberately broken roots) are built once per module.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tbx.cli.main import main
from tbx.data.coco import load_json

TINY = [
    "--config",
    "tiny",
    "--set",
    "model.input_size=64",
    "--set",
    "stage1.epochs=1",
    "--set",
    "stage2.epochs=1",
    "--set",
    "stage1.batch_size=8",
    "--set",
    "stage2.batch_size=8",
    "--set",
    "data.workers=0",
    "--set",
    "model.retinanet.width=16",
    "--set",
    "model.cls_channels=16",
]


def _file_id(p: Path) -> str:
    """sha256 of a small file; for a large one (checkpoints) its inode, size and mtime — any
    rewrite or atomic replacement changes them — plus the hash of its first 64 kB."""
    st = p.stat()
    if st.st_size <= 1 << 20:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    with open(p, "rb") as f:
        head = hashlib.sha256(f.read(1 << 16)).hexdigest()
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{head}"


def tree_hash(root: Path) -> dict[str, str]:
    """rel path → content id (links: their target) of every entry under ``root``."""
    out: dict[str, str] = {}
    if root.is_file():
        return {".": _file_id(root)}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = _file_id(p)
        elif p.is_dir():
            out[rel] = "dir"
    return out


def leftovers(root: Path) -> list[str]:
    """Temporary files/folders and partial builds anywhere under ``root``."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.endswith(".tmp") or p.name.endswith(".partial") or p.name.endswith(".old")
    )


def _run(*args: object) -> tuple[int, str, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------------
# fixtures, built once per module


@dataclass
class Fx:
    base: Path
    ds: Path  # synthetic TBX11K layout (split assigned)
    raw: Path  # raw hospital export
    run: Path  # finished tiny run (both stages)
    pred: Path  # predictions of the run on ds's test split
    study: Path  # a small study
    secret: Path  # a file outside every root that must never be read into an output
    user: Path  # a folder of the user's own files
    evil: Path  # layout root whose annotation files escape imgs/
    corrupt: Path  # layout root with one corrupt PNG
    inputs: list[Path] = field(default_factory=list)


def _write_ann(path: Path, file_names: list[str], size: int = 256) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "images": [
                    {"id": i + 1, "file_name": fn, "width": size, "height": size}
                    for i, fn in enumerate(file_names)
                ],
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


@pytest.fixture(scope="module")
def fx(tmp_path_factory, synth_root) -> Fx:
    base = tmp_path_factory.mktemp("catalogue")
    ds = synth_root
    raw = base / "raw"
    assert (
        _run(
            "dataset",
            "synth",
            raw,
            "--raw",
            "--size",
            "64",
            "--n-healthy",
            "2",
            "--n-sick",
            "2",
            "--n-active",
            "2",
            "--n-latent",
            "1",
            "--n-both",
            "0",
            "--n-uncertain",
            "0",
        )[0]
        == 0
    )
    run = base / "run"
    code, _, err = _run("train", "symformer", "--data", ds, "--out", run, *TINY, "--set", "stage2.epochs=0")
    assert code == 0, err
    pred = base / "pred"
    test_ann = ds / "annotations/json/all_test.json"
    code, _, err = _run("predict", run, "--data", ds, "--ann", test_ann, "--out", pred, "--workers", "0")
    assert code == 0, err
    study = base / "study"
    code, _, err = _run(
        "study",
        "sample",
        ds,
        "--out",
        study,
        "--n-healthy",
        "2",
        "--n-sick",
        "1",
        "--n-tb",
        "2",
        "--tb-mix",
        "1:1:0:0",
    )
    assert code == 0, err
    secret = base / "secret.txt"
    secret.write_text("patient: Jane Doe, MRN 12345\n")
    user = base / "user"
    user.mkdir()
    (user / "thesis.docx").write_text("years of work")
    (user / "sub").mkdir()
    (user / "sub" / "data.csv").write_text("a,b\n1,2\n")

    evil = base / "evil"
    (evil / "imgs" / "health").mkdir(parents=True)
    shutil.copy(next((ds / "imgs" / "health").glob("*.png")), evil / "imgs" / "health" / "h0001.png")
    os.symlink(secret, evil / "imgs" / "health" / "link.png")
    jdir = evil / "annotations" / "json"
    _write_ann(jdir / "TBX11K_test.json", ["health/../../../secret.txt"])
    _write_ann(jdir / "absolute.json", [str(secret)])
    _write_ann(jdir / "link.json", ["health/link.png"])
    evil_link = base / "evil_link"  # a study source whose only image is a link out of imgs/
    shutil.copytree(evil, evil_link, symlinks=True)
    _write_ann(evil_link / "annotations/json/TBX11K_test.json", ["health/link.png"])

    corrupt = base / "corrupt"
    (corrupt / "imgs" / "health").mkdir(parents=True)
    for k, png in enumerate(sorted((ds / "imgs" / "health").glob("*.png"))[:3]):
        shutil.copy(png, corrupt / "imgs" / "health" / f"h{k}.png")
    (corrupt / "imgs" / "health" / "h1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    _write_ann(corrupt / "ann.json", [f"health/h{k}.png" for k in range(3)])
    return Fx(
        base,
        ds,
        raw,
        run,
        pred,
        study,
        secret,
        user,
        evil,
        corrupt,
        inputs=[ds, raw, run, pred, study, secret, user, evil, evil_link, corrupt],
    )


# ------------------------------------------------------------------------------------------------
# the cases: (id, build(fx, tmp) → (args, output path or None), expected text in the line)


@dataclass
class Case:
    id: str
    build: Callable[[Fx, Path], tuple[list[object], Path | None]]
    expect: str = ""
    code: int = 2
    patch: Callable[[pytest.MonkeyPatch], None] | None = None
    resumable: bool = False  # a failed build keeps OUT.partial/ for the rerun (by design)


def _file(tmp: Path, name: str = "afile.txt") -> Path:
    p = tmp / name
    p.write_text("not a folder")
    return p


def _dir(tmp: Path, name: str = "adir") -> Path:
    p = tmp / name
    p.mkdir()
    return p


def _manifest(tmp: Path, fx: Fx, rows: list[str], name: str = "rawbad") -> Path:
    src = tmp / name
    shutil.copytree(fx.raw, src)
    (src / "manifest.csv").write_text("file,patient_id,label,tb_type,source\n" + "\n".join(rows) + "\n")
    return src


def _reads(tmp: Path, fx: Fx) -> Path:
    rows = ["case_id,label"] + [
        f"{line.split(',')[0]},healthy" for line in (fx.study / "cases.csv").read_text().splitlines()[1:]
    ]
    p = tmp / "reads.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def _enospc(mp: pytest.MonkeyPatch) -> None:
    import tempfile

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", k.get("dir"))

    mp.setattr(tempfile, "mkstemp", full)
    mp.setattr(tempfile, "mkdtemp", full)


def _erofs(mp: pytest.MonkeyPatch) -> None:
    import tempfile

    def ro(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", k.get("dir"))

    mp.setattr(tempfile, "mkstemp", ro)
    mp.setattr(tempfile, "mkdtemp", ro)


ANN_TEST = "annotations/json/all_test.json"
TV = "annotations/json/all_trainval.json"


def _tr(fx: Fx, out: Path, *extra: object) -> list[object]:
    return ["train", "symformer", "--data", fx.ds, "--out", out, *TINY, *extra]


CASES: list[Case] = [
    # 1. paths escape their root -------------------------------------------------------------
    Case(
        "containment-study-sample-dotdot",
        lambda fx, t: (
            [
                "study",
                "sample",
                fx.evil,
                "--out",
                t / "s",
                "--n-healthy",
                "1",
                "--n-sick",
                "0",
                "--n-tb",
                "0",
            ],
            t / "s",
        ),
        "escapes imgs/",
    ),
    Case(
        "containment-study-sample-symlink",
        lambda fx, t: (
            [
                "study",
                "sample",
                fx.base / "evil_link",
                "--out",
                t / "s",
                "--n-healthy",
                "1",
                "--n-sick",
                "0",
                "--n-tb",
                "0",
            ],
            t / "s",
        ),
        "pointing outside imgs/",
    ),
    Case(
        "containment-study-sheet",
        lambda fx, t: (["study", "sheet", _evil_study(fx, t)], None),
        "escapes the study folder",
    ),
    Case(
        "containment-predict-absolute",
        lambda fx, t: (
            [
                "predict",
                fx.run,
                "--data",
                fx.evil,
                "--ann",
                fx.evil / "annotations/json/absolute.json",
                "--out",
                t / "p",
            ],
            t / "p",
        ),
        "absolute path",
    ),
    Case(
        "containment-predict-symlink",
        lambda fx, t: (
            [
                "predict",
                fx.run,
                "--data",
                fx.evil,
                "--ann",
                fx.evil / "annotations/json/link.json",
                "--out",
                t / "p",
            ],
            t / "p",
        ),
        "pointing outside imgs/",
    ),
    Case(
        "containment-train-stage-ann",
        lambda fx, t: (
            _tr(fx, t / "r", "--set", f"data.stage2_ann={fx.evil / 'annotations/json/TBX11K_test.json'}"),
            t / "r",
        ),
        "escapes imgs/",
    ),
    Case(
        "containment-stats",
        lambda fx, t: (["dataset", "stats", fx.evil / "annotations/json/TBX11K_test.json"], None),
        "escapes imgs/",
    ),
    Case(
        "containment-build-manifest-dotdot",
        lambda fx, t: (
            ["dataset", "build", _manifest(t, fx, ["../secret.txt,P1,healthy,none,tbx11k"]), t / "o"],
            t / "o",
        ),
        "escapes the source folder",
    ),
    Case(
        "containment-build-manifest-absolute",
        lambda fx, t: (
            ["dataset", "build", _manifest(t, fx, [f"{fx.secret},P1,healthy,none,tbx11k"]), t / "o"],
            t / "o",
        ),
        "absolute path",
    ),
    Case(
        "containment-build-release-list",
        lambda fx, t: (
            ["dataset", "build", _release(t, ["health/../../secret.txt"]), t / "o", "--no-images"],
            t / "o",
        ),
        "escapes imgs/",
    ),
    Case(
        "containment-split",
        lambda fx, t: (
            ["dataset", "split", fx.evil / "annotations/json/TBX11K_test.json", "--out", t / "sp"],
            t / "sp",
        ),
        "escapes imgs/",
    ),
    # 2. --force / --overwrite never delete what tbx does not own ----------------------------
    Case(
        "ownership-study-out-is-source",
        lambda fx, t: (
            [
                "study",
                "sample",
                fx.ds,
                "--out",
                fx.ds,
                "--force",
                "--n-healthy",
                "1",
                "--n-sick",
                "0",
                "--n-tb",
                "0",
            ],
            None,
        ),
        "input",
    ),
    Case(
        "ownership-study-out-inside-source",
        lambda fx, t: (
            [
                "study",
                "sample",
                fx.ds,
                "--out",
                fx.ds / "imgs",
                "--force",
                "--n-healthy",
                "1",
                "--n-sick",
                "0",
                "--n-tb",
                "0",
            ],
            None,
        ),
        "input",
    ),
    Case(
        "ownership-study-out-user-folder",
        lambda fx, t: (
            [
                "study",
                "sample",
                fx.ds,
                "--out",
                fx.user,
                "--force",
                "--n-healthy",
                "1",
                "--n-sick",
                "0",
                "--n-tb",
                "0",
            ],
            None,
        ),
        "not created by tbx",
    ),
    Case(
        "ownership-study-out-is-run",
        lambda fx, t: (
            [
                "study",
                "sample",
                fx.ds,
                "--out",
                fx.run,
                "--force",
                "--n-healthy",
                "1",
                "--n-sick",
                "0",
                "--n-tb",
                "0",
            ],
            None,
        ),
        "holds a tbx run, not a study",
    ),
    Case(
        "ownership-build-overwrite-user-folder",
        lambda fx, t: (["dataset", "build", fx.raw, fx.user, "--overwrite"], None),
        "not created by tbx",
    ),
    Case(
        "ownership-build-overwrite-run",
        lambda fx, t: (["dataset", "build", fx.raw, fx.run, "--overwrite"], None),
        "holds a tbx run, not a dataset",
    ),
    Case(
        "ownership-synth-force-user-folder",
        lambda fx, t: (["dataset", "synth", fx.user, "--force", "--size", "64"], None),
        "not created by tbx",
    ),
    Case(
        "ownership-synth-force-study",
        lambda fx, t: (["dataset", "synth", fx.study, "--force", "--size", "64"], None),
        "holds a tbx study",
    ),
    Case(
        "ownership-report-out-user-folder",
        lambda fx, t: (["report", fx.run, "--out", fx.user, "--no-figures"], None),
        "earlier tbx report",
    ),
    Case(
        "ownership-report-out-is-run",
        lambda fx, t: (["report", fx.run, "--out", fx.run, "--no-figures"], None),
        "report",
    ),
    Case(
        "ownership-predict-out-user-folder",
        lambda fx, t: (["predict", fx.run, "--data", fx.ds, "--ann", ANN_TEST, "--out", fx.user], None),
        "not created by tbx",
    ),
    Case(
        "ownership-predict-out-is-dataset",
        lambda fx, t: (["predict", fx.run, "--data", fx.ds, "--ann", ANN_TEST, "--out", fx.ds], None),
        "input",
    ),
    Case(
        "ownership-train-force-user-folder",
        lambda fx, t: (_tr(fx, fx.user, "--force"), None),
        "not created by tbx",
    ),
    # 3. a run is never silently replaced ----------------------------------------------------
    Case("run-exists-no-resume", lambda fx, t: (_tr(fx, fx.run), None), "a run already exists"),
    Case("run-into-user-folder", lambda fx, t: (_tr(fx, fx.user), None), "not created by tbx"),
    Case("run-out-is-file", lambda fx, t: (_tr(fx, fx.secret), None), "names a file"),
    # 4. --resume takes RUN/config.yaml as the truth -----------------------------------------
    Case(
        "resume-other-model",
        lambda fx, t: (["train", "retinanet", "--data", fx.ds, "--out", fx.run, "--resume"], None),
        "the run is of model",
    ),
    Case(
        "resume-differing-set",
        lambda fx, t: (
            ["train", "--data", fx.ds, "--out", fx.run, "--resume", "--set", "stage1.lr=0.5"],
            None,
        ),
        "'stage1.lr' differs",
    ),
    Case(
        "resume-differing-seed",
        lambda fx, t: (["train", "--data", fx.ds, "--out", fx.run, "--resume", "--seed", "7"], None),
        "'seed' differs",
    ),
    Case(
        "resume-with-config",
        lambda fx, t: (["train", "--data", fx.ds, "--out", fx.run, "--resume", "--config", "tiny"], None),
        "--config",
    ),
    Case(
        "resume-and-force",
        lambda fx, t: (["train", "--data", fx.ds, "--out", fx.run, "--resume", "--force"], None),
        "exclude each other",
    ),
    Case(
        "resume-no-run",
        lambda fx, t: (["train", "--data", fx.ds, "--out", t / "none", "--resume"], t / "none"),
        "nothing to resume",
    ),
    Case(
        "resume-user-folder",
        lambda fx, t: (["train", "--data", fx.ds, "--out", fx.user, "--resume"], None),
        "nothing to resume",
    ),
    # 5. operating-system errors --------------------------------------------------------------
    Case(
        "os-stats-json-is-folder",
        lambda fx, t: (["dataset", "stats", fx.ds, "--json", _dir(t)], None),
        "folder",
    ),
    Case(
        "os-stats-json-under-file",
        lambda fx, t: (["dataset", "stats", fx.ds, "--json", _file(t) / "s.json"], None),
        "afile.txt",
    ),
    Case(
        "os-validate-json-is-folder",
        lambda fx, t: (["dataset", "validate", fx.ds, "--no-images", "--json", _dir(t)], None),
        "folder",
    ),
    Case(
        "os-bench-json-is-folder",
        lambda fx, t: (["bench", "--gt", fx.ds / ANN_TEST, "--pred", fx.pred, "--json", _dir(t)], None),
        "folder",
    ),
    Case(
        "os-bench-compare-json-is-folder",
        lambda fx, t: (
            [
                "bench",
                "compare",
                fx.pred,
                fx.pred,
                "--gt",
                fx.ds / ANN_TEST,
                "--json",
                _dir(t),
                "--bootstrap",
                "10",
            ],
            None,
        ),
        "folder",
    ),
    Case(
        "os-study-compare-json-is-folder",
        lambda fx, t: (
            ["study", "compare", fx.study, _reads(t, fx), "--json", _dir(t), "--n-boot", "10"],
            None,
        ),
        "folder",
    ),
    Case(
        "os-synth-out-is-file",
        lambda fx, t: (["dataset", "synth", _file(t), "--size", "64"], None),
        "not a directory",
    ),
    Case(
        "os-synth-out-under-file",
        lambda fx, t: (["dataset", "synth", _file(t) / "sub", "--size", "64"], None),
        "afile.txt",
    ),
    Case(
        "os-build-out-is-file", lambda fx, t: (["dataset", "build", fx.raw, _file(t)], None), "already exists"
    ),
    Case(
        "os-build-out-under-file",
        lambda fx, t: (["dataset", "build", fx.raw, _file(t) / "o"], None),
        "not a directory",
    ),
    Case(
        "os-split-out-is-file",
        lambda fx, t: (["dataset", "split", fx.ds / "annotations/json", "--out", _file(t)], None),
        "",
    ),
    Case(
        "os-predict-out-is-file",
        lambda fx, t: (["predict", fx.run, "--data", fx.ds, "--ann", ANN_TEST, "--out", _file(t)], None),
        "not a folder",
    ),
    Case(
        "os-report-out-is-file",
        lambda fx, t: (["report", fx.run, "--out", _file(t), "--no-figures"], None),
        "",
    ),
    Case(
        "os-synth-disk-full",
        lambda fx, t: (["dataset", "synth", t / "o", "--size", "64"], t / "o"),
        "no space left on device",
        patch=_enospc,
    ),
    Case(
        "os-build-disk-full",
        lambda fx, t: (["dataset", "build", fx.raw, t / "o"], t / "o"),
        "no space left on device",
        patch=_enospc,
        resumable=True,
    ),
    Case(
        "os-stats-read-only",
        lambda fx, t: (["dataset", "stats", fx.ds, "--json", t / "s.json"], t / "s.json"),
        "read-only",
        patch=_erofs,
    ),
    Case(
        "os-bench-read-only",
        lambda fx, t: (
            ["bench", "--gt", fx.ds / ANN_TEST, "--pred", fx.pred, "--json", t / "b.json"],
            t / "b.json",
        ),
        "read-only",
        patch=_erofs,
    ),
    Case(
        "os-study-compare-read-only",
        lambda fx, t: (
            ["study", "compare", fx.study, _reads(t, fx), "--json", t / "c.json", "--n-boot", "10"],
            t / "c.json",
        ),
        "read-only",
        patch=_erofs,
    ),
    Case("os-train-disk-full", lambda fx, t: (_tr(fx, t / "r"), t / "r"), "no space left", patch=_enospc),
    # 6. numbers are range-checked before any work -------------------------------------------
    Case(
        "range-predict-batch-0",
        lambda fx, t: (
            ["predict", fx.run, "--data", fx.ds, "--ann", ANN_TEST, "--out", t / "p", "--batch", "0"],
            t / "p",
        ),
        "--batch",
    ),
    Case("range-models-info-input-0", lambda fx, t: (["models", "info", "--input", "0"], None), "--input"),
    Case(
        "range-models-info-input-negative",
        lambda fx, t: (["models", "info", "--input", "-64"], None),
        "--input",
    ),
    Case(
        "range-num-classes-0",
        lambda fx, t: (_tr(fx, t / "r", "--set", "model.num_classes=0"), t / "r"),
        "model.num_classes",
    ),
    Case(
        "range-flip-prob",
        lambda fx, t: (_tr(fx, t / "r", "--set", "data.flip_prob=7"), t / "r"),
        "data.flip_prob",
    ),
    Case(
        "range-batch-size-0",
        lambda fx, t: (_tr(fx, t / "r", "--set", "stage1.batch_size=0"), t / "r"),
        "stage1.batch_size",
    ),
    Case(
        "range-negative-lr", lambda fx, t: (_tr(fx, t / "r", "--set", "stage2.lr=-1"), t / "r"), "stage2.lr"
    ),
    Case(
        "range-momentum",
        lambda fx, t: (_tr(fx, t / "r", "--set", "stage1.momentum=2"), t / "r"),
        "stage1.momentum",
    ),
    Case(
        "range-input-size",
        lambda fx, t: (_tr(fx, t / "r", "--set", "model.input_size=8"), t / "r"),
        "model.input_size",
    ),
    Case(
        "range-trainable-typo",
        lambda fx, t: (_tr(fx, t / "r", "--set", "stage2.trainable=[cls_haed]"), t / "r"),
        "cls_haed",
    ),
    Case(
        "range-stage1-trainable",
        lambda fx, t: (_tr(fx, t / "r", "--set", "stage1.trainable=[backbone]"), t / "r"),
        "stage1.trainable",
    ),
    Case("range-val-every-0", lambda fx, t: (_tr(fx, t / "r", "--val-every", "0"), t / "r"), "--val-every"),
    Case(
        "range-synth-size-0", lambda fx, t: (["dataset", "synth", t / "o", "--size", "0"], t / "o"), "--size"
    ),
    Case(
        "range-synth-negative-count",
        lambda fx, t: (["dataset", "synth", t / "o", "--n-sick", "-1"], t / "o"),
        "--n-sick",
    ),
    Case(
        "range-build-workers-0",
        lambda fx, t: (["dataset", "build", fx.raw, t / "o", "--workers", "0"], t / "o"),
        "--workers",
    ),
    Case(
        "range-build-channels-2",
        lambda fx, t: (["dataset", "build", fx.raw, t / "o", "--channels", "2"], t / "o"),
        "--channels",
    ),
    Case(
        "range-validate-negative-threshold",
        lambda fx, t: (["dataset", "validate", fx.ds, "--dup-threshold", "-1"], None),
        "--dup-threshold",
    ),
    Case(
        "range-study-negative-n-tb",
        lambda fx, t: (["study", "sample", fx.ds, "--out", t / "s", "--n-tb", "-1"], t / "s"),
        "--n-tb",
    ),
    Case(
        "range-study-compare-n-boot-0",
        lambda fx, t: (["study", "compare", fx.study, _reads(t, fx), "--n-boot", "0"], None),
        "--n-boot",
    ),
    Case(
        "range-bench-compare-bootstrap-0",
        lambda fx, t: (
            ["bench", "compare", fx.pred, fx.pred, "--gt", fx.ds / ANN_TEST, "--bootstrap", "0"],
            None,
        ),
        "--bootstrap",
    ),
    Case(
        "range-report-overlays-negative",
        lambda fx, t: (["report", fx.run, "--out", t / "rep", "--overlays", "-1"], t / "rep"),
        "--overlays",
    ),
    Case(
        "range-split-folds-negative",
        lambda fx, t: (["dataset", "split", fx.ds, "--out", t / "sp", "--folds", "-2"], t / "sp"),
        "--folds",
    ),
    # 7. worker errors are unwrapped ----------------------------------------------------------
    Case(
        "worker-predict-corrupt-image",
        lambda fx, t: (
            [
                "predict",
                fx.run,
                "--data",
                fx.corrupt,
                "--ann",
                fx.corrupt / "ann.json",
                "--out",
                t / "p",
                "--workers",
                "1",
                "--batch",
                "1",
            ],
            t / "p",
        ),
        "h1.png",
    ),
    # 8. options are checked before the work --------------------------------------------------
    Case(
        "options-build-ratio",
        lambda fx, t: (["dataset", "build", fx.raw, t / "o", "--ratio", "a:b:c"], t / "o"),
        "'a:b:c'",
    ),
    Case(
        "options-build-ratio-two-parts",
        lambda fx, t: (["dataset", "build", fx.raw, t / "o", "--ratio", "3:2"], t / "o"),
        "three parts",
    ),
    *[
        Case(
            f"options-build-name-pattern-{kind}",
            lambda fx, t, pattern=pattern: (
                ["dataset", "build", fx.raw, t / "o", "--name-pattern", pattern],
                t / "o",
            ),
            "--name-pattern",
        )
        for kind, pattern in (("field", "{nope}"), ("constant", "x"), ("slash", "a/{n}"), ("format", "{n:q}"))
    ],
    Case(
        "options-split-ratio",
        lambda fx, t: (["dataset", "split", fx.ds, "--out", t / "sp", "--ratio", "1:x:1"], t / "sp"),
        "'1:x:1'",
    ),
    # minor ones ------------------------------------------------------------------------------
    Case(
        "minor-markup-in-path",
        lambda fx, t: (["dataset", "stats", t / "[bold]x[/] :thumbs_up:"], None),
        "[bold]x[/] :thumbs_up:",
    ),
    Case(
        "minor-corrupt-png-in-build",
        lambda fx, t: (["dataset", "build", _corrupt_raw(t, fx), t / "o"], t / "o"),
        "corrupt",
        resumable=True,
    ),
    Case(
        "minor-non-dicom-dcm",
        lambda fx, t: (["dataset", "build", _corrupt_raw(t, fx, suffix=".dcm"), t / "o"], t / "o"),
        "not a DICOM file",
        resumable=True,
    ),
    Case(
        "minor-pickle-checkpoint",
        lambda fx, t: (
            ["predict", _pickle_ckpt(t), "--data", fx.ds, "--ann", ANN_TEST, "--out", t / "p"],
            t / "p",
        ),
        "safe load refuses",
    ),
    Case(
        "minor-report-run-twice",
        lambda fx, t: (["report", fx.run, fx.run, "--out", t / "rep", "--no-figures"], t / "rep"),
        "given twice",
    ),
    Case(
        "minor-usage-unknown-option",
        lambda fx, t: (["dataset", "synth", t / "o", "--bogus"], t / "o"),
        "--bogus",
    ),
    Case("minor-usage-bad-int", lambda fx, t: (["models", "info", "--input", "big"], None), "--input"),
    # more: missing files, unknown names ------------------------------------------------------
    Case(
        "missing-image-preflight-stage2",
        lambda fx, t: (
            ["train", "symformer", "--data", _missing_healthy(t, fx), "--out", t / "r", *TINY],
            t / "r",
        ),
        "is missing",
    ),
    Case(
        "missing-image-predict",
        lambda fx, t: (
            ["predict", fx.run, "--data", _missing_healthy(t, fx), "--ann", TV, "--out", t / "p"],
            t / "p",
        ),
        "is missing",
    ),
    Case(
        "missing-ann-predict",
        lambda fx, t: (["predict", fx.run, "--data", fx.ds, "--ann", "nope.json", "--out", t / "p"], t / "p"),
        "not found",
    ),
    Case(
        "missing-data-train",
        lambda fx, t: (["train", "symformer", "--data", t / "nodata", "--out", t / "r", *TINY], t / "r"),
        "not found",
    ),
    Case(
        "unknown-model",
        lambda fx, t: (["train", "nosuch", "--data", fx.ds, "--out", t / "r"], t / "r"),
        "unknown model",
    ),
    Case(
        "unknown-set-key",
        lambda fx, t: (_tr(fx, t / "r", "--set", "stage1.lrr=1"), t / "r"),
        "unknown config key",
    ),
    Case("bad-device", lambda fx, t: (_tr(fx, t / "r", "--device", "tpu"), t / "r"), "--device"),
    Case(
        "bad-yaml-config",
        lambda fx, t: (["train", "--data", fx.ds, "--out", t / "r", "--config", _bad_yaml(t)], t / "r"),
        "invalid YAML",
    ),
    Case("bench-missing-gt", lambda fx, t: (["bench", "--gt", t / "no.json", "--pred", fx.pred], None), ""),
    Case(
        "bench-empty-pred", lambda fx, t: (["bench", "--gt", fx.ds / ANN_TEST, "--pred", _dir(t)], None), ""
    ),
    Case(
        "study-compare-missing-reads", lambda fx, t: (["study", "compare", fx.study, t / "r.csv"], None), ""
    ),
    Case("models-info-unknown", lambda fx, t: (["models", "info", "nosuch", "--runs", "0"], None), ""),
    Case("stats-missing-root", lambda fx, t: (["dataset", "stats", t / "nothing"], None), "not found"),
    Case("validate-missing-root", lambda fx, t: (["dataset", "validate", t / "nothing"], None), ""),
]


def _evil_study(fx: Fx, tmp: Path) -> Path:
    s = tmp / "study"
    shutil.copytree(fx.study, s)
    rows = (s / "cases.csv").read_text().splitlines()
    first = rows[1].split(",")[0]
    rows[1] = f"{first},../../secret.txt"
    (s / "cases.csv").write_text("\n".join(rows) + "\n")
    return s


def _release(tmp: Path, names: list[str]) -> Path:
    src = tmp / "release"
    (src / "lists").mkdir(parents=True)
    (src / "annotations" / "xml").mkdir(parents=True)
    (src / "lists" / "TBX11K_train.txt").write_text("\n".join(names) + "\n")
    return src


def _corrupt_raw(tmp: Path, fx: Fx, suffix: str = ".png") -> Path:
    src = tmp / "rawcorrupt"
    shutil.copytree(fx.raw, src)
    rows = (src / "manifest.csv").read_text().splitlines()
    cols = rows[1].split(",")
    bad = Path(cols[0]).with_suffix(suffix)
    (src / bad).write_bytes(b"this is not an image at all" * 20)
    rows[1] = ",".join([str(bad), *cols[1:]])
    (src / "manifest.csv").write_text("\n".join(rows) + "\n")
    return src


def _pickle_ckpt(tmp: Path) -> Path:
    import pickle

    class Payload:
        def __reduce__(self):
            return (print, ("owned",))

    p = tmp / "evil.pt"
    p.write_bytes(pickle.dumps({"format": "tbx", "model": Payload()}))
    return p


def _missing_healthy(tmp: Path, fx: Fx) -> Path:
    """A copy of the dataset missing one healthy image (listed only in stage II's file)."""
    root = tmp / "ds_missing"
    shutil.copytree(fx.ds, root)
    names = [i["file_name"] for i in load_json(root / TV)["images"] if i["file_name"].startswith("health/")]
    (root / "imgs" / names[0]).unlink()
    return root


def _bad_yaml(tmp: Path) -> Path:
    p = tmp / "bad.yaml"
    p.write_text("stage1: [unclosed\n")
    return p


assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_catalogue(case: Case, fx: Fx, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args, out = case.build(fx, tmp_path)
    before = {p: tree_hash(p) for p in fx.inputs}
    local = tree_hash(tmp_path)
    if case.patch is not None:
        case.patch(monkeypatch)
    code, stdout, err = _run(*args)
    monkeypatch.undo()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == case.code, f"exit {code}: {err[-2000:]}"
    assert len(lines) == 1, err[-2000:]
    line = lines[0]
    assert line.startswith("error: ") and len(line) <= 300, line
    assert "Traceback" not in err + stdout and "object at 0x" not in line, line
    assert "weights_only" not in line
    assert case.expect in line, line
    for p in fx.inputs:  # every input (and the user's own files) byte-identical
        assert tree_hash(p) == before[p], f"{p} changed"
    assert fx.secret.read_text().startswith("patient:")
    if out is not None:  # no partial output
        assert tree_hash(tmp_path).get(str(out.relative_to(tmp_path))) == local.get(
            str(out.relative_to(tmp_path))
        ), f"{out} was created or changed"
    left = leftovers(tmp_path)
    if case.resumable:  # only the resumable OUT.partial/ of a build, nothing temporary
        left = [p for p in left if not p.startswith(f"{out.name}.partial")]
    assert left == [] and leftovers(fx.base) == []
    assert fx.secret.read_text() not in (stdout + err)


def test_catalogue_size() -> None:
    assert len(CASES) >= 60


# ------------------------------------------------------------------------------------------------
# companions: the same rules where the command's contract is not "exit 2"


def test_validate_reports_an_escaping_path_without_reading_it(fx: Fx, tmp_path: Path) -> None:
    """validate's contract is findings + exit 1: an escaping or linked-out path is an error finding,
    and the file it points at is never opened (its content appears nowhere)."""
    for root, text in ((fx.evil, "escapes imgs/"), (fx.base / "evil_link", "pointing outside imgs/")):
        report = tmp_path / f"{root.name}.json"
        code, stdout, err = _run("dataset", "validate", root, "--json", report)
        assert code == 1, err
        found = json.loads(report.read_text())["findings"]
        assert any(f["severity"] == "error" and text in f["message"] for f in found), found
        assert "Jane Doe" not in stdout + err + report.read_text()


def test_stats_says_what_it_did_not_count(tmp_path: Path) -> None:
    ann = _write_ann(tmp_path / "a.json", ["tb/tb0001.png", "tb/tb0002.png"])
    data = json.loads(ann.read_text())
    data["annotations"] = [
        {"id": 1, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]},
        {"id": 2, "image_id": 2, "category_id": 1, "bbox": [10, 10, -4, 5]},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 10, 4, 5]},
    ]
    ann.write_text(json.dumps(data))
    code, stdout, err = _run("dataset", "stats", ann, "--json", tmp_path / "s.json")
    assert code == 0, err
    text = " ".join(stdout.split())
    assert "1 box(es) of unknown category 9" in text and "1 box(es) of zero or negative size" in text
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["boxes"]["all"]["total"] == 1 and s["degenerate_boxes"] == 1


def test_two_bench_results_in_one_folder_keep_their_own_provenance(fx: Fx, tmp_path: Path) -> None:
    for name, seed in (("a.json", "1"), ("b.json", "2")):
        code, _, err = _run(
            "bench",
            "--gt",
            fx.ds / ANN_TEST,
            "--pred",
            fx.pred,
            "--json",
            tmp_path / name,
            "--bootstrap",
            "5",
            "--seed",
            seed,
        )
        assert code == 0, err
    a = json.loads((tmp_path / "a.provenance.json").read_text())
    b = json.loads((tmp_path / "b.provenance.json").read_text())
    assert (a["seed"], a["output"], b["seed"], b["output"]) == (1, "a.json", 2, "b.json")


def test_force_replaces_tbx_own_output_and_every_output_is_marked(fx: Fx, tmp_path: Path) -> None:
    from tbx.io import output_kind

    assert [output_kind(p) for p in (fx.ds, fx.raw, fx.run, fx.pred, fx.study)] == [
        "dataset",
        "export",
        "run",
        "predictions",
        "study",
    ]
    code, _, err = _run(
        "study",
        "sample",
        fx.ds,
        "--out",
        fx.base / "study2",
        "--n-healthy",
        "1",
        "--n-sick",
        "0",
        "--n-tb",
        "0",
    )
    assert code == 0, err
    code, _, err = _run(
        "study",
        "sample",
        fx.ds,
        "--out",
        fx.base / "study2",
        "--force",
        "--n-healthy",
        "2",
        "--n-sick",
        "0",
        "--n-tb",
        "0",
        "--seed",
        "3",
    )
    assert code == 0, err
    assert len((fx.base / "study2" / "cases.csv").read_text().splitlines()) == 3


def test_worker_traceback_is_unwrapped_to_its_original_line() -> None:
    """The text torch's DataLoader re-raises (``Caught X in DataLoader worker process N`` + the
    worker's whole traceback) becomes the worker's own one line."""
    from tbx.errors import TbxError, as_user_error

    inner = TbxError(
        "cannot decode image: broken PNG", "/data/imgs/health/h1.png", "replace the corrupt file"
    )
    text = (
        "Caught TbxError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "/x/worker.py", line 349, in _worker_loop\n    data = fetcher.fetch(index)\n'
        f"tbx.errors.TbxError: {inner.one_line()}\n"
    )
    assert as_user_error(TbxError(text)).one_line() == inner.one_line()
    value = as_user_error(
        ValueError(text.replace("TbxError", "ValueError").replace("tbx.errors.ValueError", "ValueError"))
    )
    assert value is not None and "ValueError in a data-loading worker" in value.one_line()
    assert "Traceback" not in value.one_line()
    assert as_user_error(TypeError("a bug")) is None  # programming errors keep their traceback


def test_a_rerun_removes_what_a_killed_run_left(fx: Fx, tmp_path: Path) -> None:
    """kill -9 cannot run ``finally``: the temporary sibling of an output folder and the half-saved
    file inside a run are removed by the next run of the command (atomic_dir / resume)."""
    out = tmp_path / "o"
    stale = tmp_path / ".o.k1ll3d.tmp"
    (stale / "imgs").mkdir(parents=True)
    (stale / "imgs" / "half.png").write_bytes(b"\x89PNG")
    code, _, err = _run(
        "dataset",
        "synth",
        out,
        "--size",
        "64",
        "--n-healthy",
        "1",
        "--n-sick",
        "1",
        "--n-active",
        "1",
        "--n-latent",
        "0",
        "--n-both",
        "0",
        "--n-uncertain",
        "0",
    )
    assert code == 0, err
    assert not stale.exists() and leftovers(tmp_path) == []


def test_out_of_memory_says_what_to_lower() -> None:
    from tbx.errors import as_user_error

    err = as_user_error(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79 GiB total)"))
    assert err is not None and "batch size" in err.one_line() and len(err.one_line()) <= 300
