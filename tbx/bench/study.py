"""The radiologist reading study (docs/dataset.md §1.5): sample cases, a reading form, and the comparison.

A study directory (``STUDY_DIR``) holds:

* ``cases.csv`` — ``case_id,image`` in reading order (what a reader may see), and
  ``images/case_001.png`` … — anonymised copies (hard links when possible) of the sampled images;
* ``key.csv`` — ``case_id,label,tb_type,file_name,image_id``: the gold standard and where each case
  comes from (never give it to a reader); ``study.json`` — the dataset root, the annotation JSON the
  cases were drawn from (its image ids match the lines of a ``cls_result.txt`` predicted for that
  file, docs/protocol.md §4.1), the seed and the composition;
* after :func:`write_sheet`: ``reading_form.html`` (self-contained, images embedded as data URIs, no
  network; one case at a time, keys 1–5, window/level, zoom, reading time per case, answers kept in
  the browser; "Export reads" downloads ``reads_<reader>.csv`` = ``case_id,label,comment,seconds``)
  and ``reads_template.csv`` (the same columns, left blank, for spreadsheet users);
* after :func:`compare`: ``study_compare.json``.

Each step writes its provenance: ``provenance.json`` (sample), ``provenance_sheet.json``,
``provenance_compare.json`` (beside the compare JSON).

Reader answers (``label`` column, case-insensitive): ``healthy``, ``sick`` (sick but non-TB),
``active``, ``latent``, ``active+latent`` (both TB types seen); ``tb`` (TB, type not given) is also
accepted.  An optional ``seconds`` column (the form's reading time per case; blank = not timed)
gives each reader's median and total reading time.  Scoring (docs/dataset.md §1.5):

* **accuracy with TB types** — a case is right when the reader's class is right and, for TB, the
  reader's set of TB types equals the gold set ({active}, {latent}, {active, latent}); for gold
  *uncertain-type* TB any TB answer is right;
* **3-class accuracy** — healthy / sick / TB, ignoring the active/latent distinction (the paper's
  84.8 %); **sensitivity** = recall of TB, **specificity** = recall of non-TB (healthy ∪ sick,
  docs/protocol.md §4.2); **Cohen's kappa** vs gold on the 3 classes; 3×3 confusion (rows gold,
  columns reader)
  and a type-level confusion;
* bootstrap 95 % percentile CIs over cases (seeded, :func:`tbx.bench.stats.bootstrap_counts`);
* inter-reader agreement: Fleiss' kappa (3 classes) with ≥ 3 readers, Cohen's kappa with 2; the
  pairwise Cohen kappas are always listed;
* with model predictions: the model's 3-class accuracy, sensitivity, specificity, kappa and
  confusion on the same cases (a model has no TB type), its ROC on the cases with each reader's
  operating point (1 − specificity, sensitivity), and a paired **McNemar** test of model vs reader
  3-class correctness: ``b`` = cases the model gets right and the reader wrong, ``c`` = the reverse;
  when ``b + c < 25`` the exact two-sided binomial test (``p = min(1, 2·P[X ≤ min(b, c)])``,
  X ~ Bin(b + c, ½); statistic = min(b, c)), otherwise the chi-square statistic with continuity
  correction ``(|b − c| − 1)² / (b + c)`` on 1 degree of freedom.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tbx.data.coco import read_coco
from tbx.data.layout import ANN_JSON, IMGS, resolve_inside, tbx_json_name
from tbx.data.records import Record
from tbx.errors import TbxError, where
from tbx.io import atomic_dir, atomic_write_json, atomic_write_text, check_replaceable, link_or_copy, read_csv

CASES = "cases.csv"
KEY = "key.csv"
STUDY_JSON = "study.json"
SHEET = "reading_form.html"
TEMPLATE = "reads_template.csv"
COMPARE_JSON = "study_compare.json"
SIMULATED = "reads_simulated_reader.csv"

CLASSES = ("healthy", "sick", "tb")  # 3-class index 0/1/2 (CLASS_INDEX, docs/protocol.md §4.1)
TB_MIX_TYPES = ("active", "latent", "active+latent", "uncertain")
ANSWERS = ("healthy", "sick", "active", "latent", "active+latent", "tb")
FORM_CHOICES = (
    ("healthy", "healthy"),
    ("sick", "sick, non-TB"),
    ("active", "active TB"),
    ("latent", "latent TB"),
    ("active+latent", "active + latent TB"),
)
GOLD_ROWS = ("healthy", "sick", "active", "latent", "active+latent", "uncertain")
_TYPE_SET = {
    "active": frozenset({"active"}),
    "latent": frozenset({"latent"}),
    "active+latent": frozenset({"active", "latent"}),
    "tb": frozenset(),
}
_SYNONYMS = {
    "healthy": "healthy",
    "normal": "healthy",
    "h": "healthy",
    "sick": "sick",
    "sick non-tb": "sick",
    "sick-non-tb": "sick",
    "sick but non-tb": "sick",
    "sick non tb": "sick",
    "non-tb sick": "sick",
    "s": "sick",
    "active": "active",
    "active tb": "active",
    "latent": "latent",
    "latent tb": "latent",
    "obsolete": "latent",
    "active+latent": "active+latent",
    "active + latent": "active+latent",
    "active+latent tb": "active+latent",
    "active + latent tb": "active+latent",
    "active & latent": "active+latent",
    "active and latent": "active+latent",
    "both": "active+latent",
    "latent+active": "active+latent",
    "tb": "tb",
}


# ----------------------------------------------------------------------------------------------
# sampling


@dataclass
class StudyConfig:
    """``tbx study sample`` options (defaults = the paper's study, docs/dataset.md §1.5)."""

    split: str = "test"
    n_healthy: int = 140
    n_sick: int = 140
    n_tb: int = 120
    tb_mix: str = "63:41:15:1"  # active-only : latent-only : both : uncertain
    seed: int = 0
    link: bool = True  # hard-link images when possible (else copy)


def _parse_mix(text: str) -> list[int]:
    parts = str(text).split(":")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        raise TbxError(
            f"--tb-mix '{text}' must be four non-negative integers active:latent:both:uncertain",
            fix="e.g. --tb-mix 63:41:15:1",
        )
    mix = [int(p) for p in parts]
    if sum(mix) == 0:
        raise TbxError(f"--tb-mix '{text}' is all zero", fix="e.g. --tb-mix 63:41:15:1")
    return mix


def tb_counts(n_tb: int, mix: str) -> dict[str, int]:
    """TB cases per type: the mix itself when it sums to ``n_tb``, else its largest-remainder
    apportionment of ``n_tb``."""
    from tbx.data.apportion import largest_remainder

    w = _parse_mix(mix)
    counts = w if sum(w) == n_tb else largest_remainder(n_tb, w)
    return dict(zip(TB_MIX_TYPES, counts))


def _stratum(r: Record) -> str | None:
    if r.source != "tbx11k":
        return None
    if r.label in ("healthy", "sick"):
        return r.label
    if r.label == "tb" and r.tb_type in TB_MIX_TYPES:
        return r.tb_type
    return None  # TB without box (type unknown) or unlabelled: not sampled


def sample_study(
    root: str | Path, out: str | Path, cfg: StudyConfig | None = None, force: bool = False
) -> Path:
    """Draw the study cases from ``ROOT/annotations/json/TBX11K_<split>.json`` into ``out``."""
    from tbx.provenance import write_provenance

    cfg = cfg or StudyConfig()
    root, out = Path(root), Path(out)
    for name in ("n_healthy", "n_sick", "n_tb"):
        if getattr(cfg, name) < 0:
            raise TbxError(f"--{name.replace('_', '-')} must be ≥ 0")
    ann_rel = f"{ANN_JSON}/{tbx_json_name(cfg.split)}"
    ann = root / ann_rel
    if not ann.is_file():
        raise TbxError(
            f"no annotation file for split '{cfg.split}'",
            ann,
            "split the dataset first (tbx dataset split) or choose --split",
        )
    records = read_coco(ann, strict_labels=False)
    want = {"healthy": cfg.n_healthy, "sick": cfg.n_sick, **tb_counts(cfg.n_tb, cfg.tb_mix)}
    if sum(want.values()) == 0:
        raise TbxError("the study would have no cases", fix="give --n-healthy/--n-sick/--n-tb > 0")
    pools: dict[str, list[Record]] = {k: [] for k in want}
    for r in records:
        s = _stratum(r)
        if s in pools:
            pools[s].append(r)
    short = [f"{k}: {len(pools[k])} available, {n} requested" for k, n in want.items() if len(pools[k]) < n]
    if short:
        raise TbxError(
            "not enough images for the study (" + "; ".join(short) + ")",
            ann,
            "lower the counts (--n-healthy/--n-sick/--n-tb/--tb-mix) or use another split",
        )
    if out.exists() and any(out.iterdir()) and not force:
        raise TbxError("study folder exists and is not empty", out, "choose another --out or pass --force")
    check_replaceable(out, "study", [ann, root / IMGS])
    rng = random.Random(f"tbx-study:{cfg.seed}")
    chosen: list[Record] = []
    for k in want:  # fixed stratum order; candidates in file-name order → reproducible
        pool = sorted(pools[k], key=lambda r: r.file_name)
        chosen += rng.sample(pool, want[k])
    rng.shuffle(chosen)  # reading order
    width = max(3, len(str(len(chosen))))
    ids = [f"case_{i + 1:0{width}d}" for i in range(len(chosen))]
    srcs = [resolve_inside(root / IMGS, r.file_name, ann, "imgs/") for r in chosen]
    missing = [r.file_name for r, src in zip(chosen, srcs) if not src.is_file()]
    if missing:
        raise TbxError(
            f"{len(missing)} sampled image(s) missing under {root / IMGS} (e.g. '{missing[0]}')",
            fix="check the dataset root's imgs/ folder",
        )
    with atomic_dir(out, overwrite=True, kind="study", inputs=[ann, root / IMGS]) as tmp:
        (tmp / "images").mkdir()
        cases_rows, key_rows = (
            [["case_id", "image"]],
            [["case_id", "label", "tb_type", "file_name", "image_id"]],
        )
        for cid, r, src in zip(ids, chosen, srcs):
            rel = f"images/{cid}{src.suffix.lower()}"
            link_or_copy(src, tmp / rel, cfg.link)
            cases_rows.append([cid, rel])
            key_rows.append(
                [cid, r.label, r.tb_type if r.label == "tb" else "none", r.file_name, str(r.image_id)]
            )
        atomic_write_text(tmp / CASES, _csv(cases_rows))
        atomic_write_text(tmp / KEY, _csv(key_rows))
        atomic_write_json(
            tmp / STUDY_JSON,
            {
                "root": str(root.resolve()),
                "annotation": ann_rel,
                "split": cfg.split,
                "n_images_in_annotation": len(records),
                "seed": cfg.seed,
                "n_cases": len(chosen),
                "composition": want,
                "tb_mix": cfg.tb_mix,
                "note": "key.csv and study.json reveal the gold standard: do not give them to readers",
            },
        )
        write_provenance(tmp, cfg, cfg.seed, root=str(root.resolve()), annotation=ann_rel)
    return out


def _csv(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------
# reading the study folder


@dataclass
class Case:
    case_id: str
    image: str
    label: str  # gold: healthy | sick | tb
    tb_type: str  # gold: none | active | latent | active+latent | uncertain
    file_name: str
    image_id: int


def load_study(study_dir: str | Path) -> tuple[list[Case], dict[str, Any]]:
    """Cases in reading order with their gold standard, and ``study.json``; checks key ↔ cases."""
    d = Path(study_dir)
    if not (d / CASES).is_file():
        raise TbxError("not a study folder (no cases.csv)", d, "create it with tbx study sample")
    cases = read_csv(d / CASES, ("case_id", "image"))
    key = read_csv(d / KEY, ("case_id", "label", "tb_type"))
    meta = json.loads((d / STUDY_JSON).read_text()) if (d / STUDY_JSON).is_file() else {}
    problems = []
    key_by: dict[str, tuple[int, dict[str, str]]] = {}
    for line, row in key:
        if row["case_id"] in key_by:
            problems.append(f"{where(d / KEY, line)}: duplicate case '{row['case_id']}'")
        key_by[row["case_id"]] = (line, row)
        if row["label"] not in CLASSES:
            problems.append(
                f"{where(d / KEY, line)}: gold label '{row['label']}' is not one of {'/'.join(CLASSES)}"
            )
        elif row["label"] == "tb" and row["tb_type"] not in TB_MIX_TYPES:
            problems.append(
                f"{where(d / KEY, line)}: gold TB type '{row['tb_type']}' is not one of "
                f"{'/'.join(TB_MIX_TYPES)}"
            )
    case_ids = [row["case_id"] for _, row in cases]
    dup = [
        f"{where(d / CASES, line)}: duplicate case '{row['case_id']}'"
        for i, (line, row) in enumerate(cases)
        if row["case_id"] in case_ids[:i]
    ]
    problems += dup
    problems += [
        f"{where(d / CASES, line)}: case '{row['case_id']}' has no row in key.csv"
        for line, row in cases
        if row["case_id"] not in key_by
    ]
    problems += [
        f"{where(d / KEY, line)}: case '{cid}' is not in cases.csv"
        for cid, (line, _) in key_by.items()
        if cid not in set(case_ids)
    ]
    if problems:
        raise TbxError(
            "key.csv and cases.csv do not match: "
            + "; ".join(problems[:20])
            + (f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""),
            d,
            "re-create the study with tbx study sample",
        )
    out = []
    for _, row in cases:
        k = key_by[row["case_id"]][1]
        out.append(
            Case(
                row["case_id"],
                row["image"],
                k["label"],
                k["tb_type"] if k["label"] == "tb" else "none",
                k.get("file_name", ""),
                int(k.get("image_id") or 0),
            )
        )
    if not out:
        raise TbxError("the study has no cases", d / CASES)
    return out, meta


# ----------------------------------------------------------------------------------------------
# reading form


READS_COLUMNS = ("case_id", "label", "comment", "seconds")  # what the form exports
_FORM_ASSETS = ("reading_form.html", "reading_form.css", "reading_form.js")
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _asset(name: str) -> str:
    from importlib.resources import files

    return files("tbx").joinpath("assets", name).read_text(encoding="utf-8")


def _render_sheet(d: Path, cases: list[Case]) -> str:
    """The reading form of a study as one self-contained HTML page (``tbx/assets/reading_form.*``
    with the CSS, the JS and every image inlined as a data URI: it makes no network request).

    One case at a time; keys 1–5 answer :data:`FORM_CHOICES` in order and move on; window/level,
    zoom, a comment and the reading time per case; answers are kept in the browser's localStorage
    under a token of the study's images (so two studies never share answers) and the reader's name;
    "Export reads" downloads ``reads_<reader>.csv`` with :data:`READS_COLUMNS`."""
    digest = hashlib.sha256()
    data_cases = []
    for c in cases:
        img = resolve_inside(d, c.image, d / CASES, "the study folder")
        if not img.is_file():
            raise TbxError(f"image of {c.case_id} not found", img, "re-create the study")
        raw = img.read_bytes()
        digest.update(c.case_id.encode() + b"\0" + hashlib.sha256(raw).digest())
        mime = _MIME.get(img.suffix.lower(), "application/octet-stream")
        data_cases.append({"id": c.case_id, "src": f"data:{mime};base64,{base64.b64encode(raw).decode()}"})
    data = {
        "token": digest.hexdigest()[:16],
        "cases": data_cases,
        "choices": FORM_CHOICES,
        "columns": READS_COLUMNS,
    }
    choices = "\n".join(
        f'<label class="choice"><input type="radio" name="answer" value="{html.escape(v)}">'
        f"<kbd>{k}</kbd> {html.escape(text)}</label>"
        for k, (v, text) in enumerate(FORM_CHOICES, start=1)
    )
    page, css, js = (_asset(n) for n in _FORM_ASSETS)
    values = {
        "TITLE": html.escape(d.resolve().name),
        "N": str(len(cases)),
        "CHOICES": choices,
        "CSS": css,
        "JS": js,
        # inside <script>: no "</" may close the element early
        "DATA": json.dumps(data, separators=(",", ":")).replace("</", "<\\/"),
    }
    return re.sub(r"\{\{([A-Z]+)\}\}", lambda m: values[m.group(1)], page)


def write_sheet(study_dir: str | Path) -> tuple[Path, Path]:
    """Write ``reading_form.html`` (:func:`_render_sheet`) and ``reads_template.csv`` into the study."""
    from tbx.provenance import write_provenance

    d = Path(study_dir)
    cases, _ = load_study(d)
    page = _render_sheet(d, cases)
    sheet = d / SHEET
    atomic_write_text(sheet, page)
    template = d / TEMPLATE
    atomic_write_text(template, _csv([list(READS_COLUMNS)] + [[c.case_id, "", "", ""] for c in cases]))
    write_provenance(
        d, None, None, name="provenance_sheet.json", n_cases=len(cases), outputs=[SHEET, TEMPLATE]
    )
    return sheet, template


# ----------------------------------------------------------------------------------------------
# reads


@dataclass
class Reads:
    name: str
    path: Path
    answers: list[str]  # normalised answer per case (reading order)
    comments: list[str]
    seconds: list[float | None] | None = None  # reading time per case; None: no ``seconds`` column


def normalise_answer(text: str) -> str | None:
    return _SYNONYMS.get(" ".join(str(text).strip().lower().replace("_", " ").split()))


def read_reads(path: str | Path, cases: list[Case], name: str | None = None) -> Reads:
    """Parse a reads CSV; every problem (unknown/missing/duplicate case, invalid label) is listed
    with ``file:line`` in one :class:`TbxError`."""
    path = Path(path)
    rows = read_csv(path, ("case_id", "label"))
    index = {c.case_id: i for i, c in enumerate(cases)}
    answers: list[str | None] = [None] * len(cases)
    comments = [""] * len(cases)
    timed = bool(rows) and "seconds" in rows[0][1]
    seconds: list[float | None] = [None] * len(cases)
    seen: dict[str, int] = {}
    problems = []
    for line, row in rows:
        cid = row["case_id"]
        loc = where(path, line)
        if cid not in index:
            problems.append(f"{loc}: unknown case id '{cid}'")
            continue
        if cid in seen:
            problems.append(f"{loc}: duplicate row for '{cid}' (first at line {seen[cid]})")
            continue
        seen[cid] = line
        ans = normalise_answer(row["label"])
        if ans is None:
            problems.append(
                f"{loc}: invalid label '{row['label']}' for '{cid}' "
                f"(use {', '.join(a for a, _ in FORM_CHOICES)})"
            )
            continue
        answers[index[cid]] = ans
        comments[index[cid]] = row.get("comment", "")
        if timed and row["seconds"]:  # blank: not timed
            try:
                t = float(row["seconds"])
            except ValueError:
                t = -1.0
            if not (math.isfinite(t) and t >= 0):
                problems.append(
                    f"{loc}: invalid seconds '{row['seconds']}' for '{cid}' "
                    "(a reading time ≥ 0 in seconds, or blank)"
                )
                continue
            seconds[index[cid]] = t
    missing = [cases[i].case_id for i, a in enumerate(answers) if a is None and cases[i].case_id not in seen]
    if missing:
        problems.append(
            f"{path}: {len(missing)} case(s) without a row: "
            + ", ".join(missing[:10])
            + (" …" if len(missing) > 10 else "")
        )
    if problems:
        raise TbxError(
            f"bad reads file ({len(problems)} problem(s)): "
            + "; ".join(problems[:20])
            + (f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""),
            path,
            "one row per case of cases.csv with a valid label",
        )
    stem = path.stem
    return Reads(
        name or (stem[len("reads_") :] if stem.startswith("reads_") and len(stem) > 6 else stem),
        path,
        [a for a in answers if a is not None],
        comments,
        seconds if timed else None,
    )


def reading_time(seconds: list[float | None] | None) -> dict[str, Any] | None:
    """Median and total reading time (s) over the timed cases; None without any timed case."""
    times = [t for t in (seconds or []) if t is not None]
    if not times:
        return None
    return {
        "median_s": float(np.median(times)),
        "total_s": float(sum(times)),
        "n_timed": len(times),
        "n_cases": len(seconds or []),
    }


# ----------------------------------------------------------------------------------------------
# statistics


def class_index(answer: str) -> int:
    return {"healthy": 0, "sick": 1}.get(answer, 2)


def type_correct(answer: str, label: str, tb_type: str) -> bool:
    """docs/dataset.md §1.5 rule: right class and, for TB, the same set of TB types (uncertain gold:
    any TB)."""
    if label != "tb":
        return answer == label
    if answer not in _TYPE_SET:
        return False
    if tb_type == "uncertain":
        return True
    return _TYPE_SET[answer] == _TYPE_SET.get(tb_type)


def cohen_kappa(a: np.ndarray, b: np.ndarray, k: int = 3) -> float:
    """Cohen's kappa of two label vectors with values 0..k-1 (1.0 when both are constant & equal)."""
    conf = np.bincount(np.asarray(a) * k + np.asarray(b), minlength=k * k).reshape(k, k)
    return _kappa_from_confusion(conf[None])[0]


def _kappa_from_confusion(conf: np.ndarray) -> np.ndarray:
    """Kappa for a stack of (B, k, k) confusion matrices (NaN when undefined: p_e = 1)."""
    conf = conf.astype(np.float64)
    n = conf.sum(axis=(1, 2))
    po = np.trace(conf, axis1=1, axis2=2) / n
    pe = (conf.sum(axis=2) * conf.sum(axis=1)).sum(axis=1) / n**2
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = np.where(pe < 1, (po - pe) / (1 - pe), np.where(po == 1, 1.0, np.nan))
    return kappa


def fleiss_kappa(ratings: np.ndarray, k: int = 3) -> float:
    """Fleiss' kappa; ``ratings`` (n_cases, n_raters) with values 0..k-1."""
    ratings = np.asarray(ratings)
    n_raters = ratings.shape[1]
    counts = np.stack([(ratings == j).sum(axis=1) for j in range(k)], axis=1).astype(np.float64)
    p_i = ((counts**2).sum(axis=1) - n_raters) / (n_raters * (n_raters - 1))
    p_bar = p_i.mean()
    p_j = counts.sum(axis=0) / (ratings.shape[0] * n_raters)
    pe = (p_j**2).sum()
    return float((p_bar - pe) / (1 - pe)) if pe < 1 else float("nan")


def mcnemar(model_right: np.ndarray, reader_right: np.ndarray) -> dict[str, Any]:
    """Paired McNemar test (see module docstring for the exact / chi-square rule)."""
    from scipy.stats import binom, chi2

    m = np.asarray(model_right, dtype=bool)
    r = np.asarray(reader_right, dtype=bool)
    b = int((m & ~r).sum())
    c = int((~m & r).sum())
    n = b + c
    if n == 0:
        return {"method": "exact binomial", "statistic": 0.0, "p_value": 1.0, "b": b, "c": c}
    if n < 25:
        p = min(1.0, 2.0 * float(binom.cdf(min(b, c), n, 0.5)))
        return {"method": "exact binomial", "statistic": float(min(b, c)), "p_value": p, "b": b, "c": c}
    stat = (abs(b - c) - 1) ** 2 / n
    return {
        "method": "chi-square with continuity correction",
        "statistic": float(stat),
        "p_value": float(chi2.sf(stat, 1)),
        "b": b,
        "c": c,
    }


def _confusion(gold: np.ndarray, pred: np.ndarray, k: int = 3) -> list[list[int]]:
    return np.bincount(gold * k + pred, minlength=k * k).reshape(k, k).tolist()


def _binary_rates(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity (TB recall) and specificity (non-TB recall) from (B, 3, 3) confusions."""
    tp = conf[:, 2, 2]
    fn = conf[:, 2, :2].sum(axis=1)
    tn = conf[:, :2, :2].sum(axis=(1, 2))
    fp = conf[:, :2, 2].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return tp / (tp + fn), tn / (tn + fp)


def _f(x: float) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


def _metrics(
    gold3: np.ndarray, pred3: np.ndarray, right_types: np.ndarray | None, boot: np.ndarray, level: float
) -> dict[str, Any]:
    """Point estimates + bootstrap CIs; ``boot`` = (B, n) resampling counts."""
    from tbx.bench.stats import percentile_ci

    n = len(gold3)
    conf = np.array(_confusion(gold3, pred3))
    sens, spec = _binary_rates(conf[None])
    out: dict[str, Any] = {}
    if right_types is not None:
        out["accuracy_types"] = float(right_types.mean())
    out.update(
        {
            "accuracy_3class": float((gold3 == pred3).mean()),
            "sensitivity": _f(sens[0]),
            "specificity": _f(spec[0]),
            "kappa_vs_gold": _f(cohen_kappa(gold3, pred3)),
            "confusion": conf.tolist(),
            "n_cases": n,
        }
    )
    # bootstrap: weighted confusions per resample (B, 9) = counts @ one-hot(gold*3+pred)
    onehot = np.zeros((n, 9))
    onehot[np.arange(n), gold3 * 3 + pred3] = 1
    bconf = (boot @ onehot).reshape(-1, 3, 3)
    bsens, bspec = _binary_rates(bconf)
    samples = {
        "accuracy_3class": np.trace(bconf, axis1=1, axis2=2) / n,
        "sensitivity": bsens,
        "specificity": bspec,
        "kappa_vs_gold": _kappa_from_confusion(bconf),
    }
    if right_types is not None:
        samples = {"accuracy_types": boot @ right_types.astype(np.float64) / n, **samples}
    out["ci"] = {k: list(percentile_ci(v, level)) for k, v in samples.items()}
    return out


@dataclass
class CompareConfig:
    n_boot: int = 2000
    seed: int = 0
    level: float = 0.95


def _load_predictions(pred: Path, cases: list[Case], meta: dict[str, Any]) -> tuple[np.ndarray, str]:
    """p(healthy, sick, TB) per case from a prediction dir (or ``cls_result.txt``) for the study's
    source annotation file; when the line count does not fit that file, the ``all_<split>.json``
    of the same root is tried (the authors evaluate over all_test, docs/protocol.md §4.2)."""
    from tbx.bench.results_io import CLS_RESULT, read_cls_result

    path = pred / CLS_RESULT if pred.is_dir() else pred
    probs = read_cls_result(path)
    root = Path(meta.get("root", ""))
    ann_rel = meta.get("annotation")
    if not ann_rel:
        raise TbxError(
            "study.json does not name the source annotation file",
            STUDY_JSON,
            "re-create the study with tbx study sample",
        )
    candidates = [ann_rel, f"{ANN_JSON}/all_{meta.get('split', 'test')}.json"]
    n_src = meta.get("n_images_in_annotation")
    for rel in candidates:  # line i ↔ i-th image of the evaluated file (docs/protocol.md §4.1)
        f = root / rel
        if not f.is_file():
            continue
        names = [img["file_name"] for img in json.loads(f.read_text())["images"]]
        if len(names) != len(probs):
            continue
        line_of = {n: i for i, n in enumerate(names)}
        miss = [c.case_id for c in cases if c.file_name not in line_of]
        if miss:
            continue
        return probs[np.array([line_of[c.file_name] for c in cases])], rel
    ids = [c.image_id for c in cases]
    if n_src == len(probs) and min(ids) >= 1 and max(ids) <= len(probs):
        # root not reachable: the release's positional ids (image id i = line i)
        return probs[np.array(ids) - 1], ann_rel
    raise TbxError(
        f"{path} has {len(probs)} lines, which matches neither the study's annotation "
        f"file ({ann_rel}, {n_src} images) nor all_{meta.get('split', 'test')}.json",
        path,
        "predict on the annotation file the study was drawn from",
    )


def compare(
    study_dir: str | Path,
    reads: list[str | Path],
    pred: str | Path | None = None,
    cfg: CompareConfig | None = None,
) -> dict[str, Any]:
    """Score readers (and a model) against the gold standard; returns the result dict (nothing
    written — see :func:`run_compare`)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from tbx.bench.stats import bootstrap_counts

    cfg = cfg or CompareConfig()
    cases, meta = load_study(study_dir)
    if not reads:
        raise TbxError("no reads file given", fix="tbx study compare STUDY_DIR READS.csv [...]")
    parsed = []
    names: Counter = Counter()
    errors = []
    for p in reads:
        try:
            r = read_reads(p, cases)
        except TbxError as e:
            errors.append(e.one_line())
            continue
        names[r.name] += 1
        if names[r.name] > 1:
            r.name = f"{r.name}#{names[r.name]}"
        parsed.append(r)
    if errors:
        raise TbxError(" | ".join(errors))
    gold3 = np.array([class_index(c.label) for c in cases])
    boot = bootstrap_counts(len(cases), cfg.n_boot, cfg.seed).astype(np.float64)
    readers = []
    preds3 = []
    for r in parsed:
        p3 = np.array([class_index(a) for a in r.answers])
        preds3.append(p3)
        rt = np.array([type_correct(a, c.label, c.tb_type) for a, c in zip(r.answers, cases)])
        m = _metrics(gold3, p3, rt, boot, cfg.level)
        types = {g: Counter() for g in GOLD_ROWS}
        for a, c in zip(r.answers, cases):
            types[c.tb_type if c.label == "tb" else c.label][a] += 1
        m["confusion_types"] = {g: {a: types[g][a] for a in ANSWERS} for g in GOLD_ROWS}
        m["operating_point"] = {
            "fpr": _f(1 - m["specificity"]) if m["specificity"] is not None else None,
            "tpr": m["sensitivity"],
        }
        m["reading_time"] = reading_time(r.seconds)
        readers.append({"name": r.name, "file": str(Path(r.path).resolve()), **m})
    keys = ("accuracy_types", "accuracy_3class", "sensitivity", "specificity", "kappa_vs_gold")
    average = {
        k: _f(float(np.mean([x[k] for x in readers if x[k] is not None])))
        if any(x[k] is not None for x in readers)
        else None
        for k in keys
    }
    agreement: dict[str, Any] | None = None
    if len(parsed) >= 2:
        pairs = [
            {"a": parsed[i].name, "b": parsed[j].name, "kappa": _f(cohen_kappa(preds3[i], preds3[j]))}
            for i in range(len(parsed))
            for j in range(i + 1, len(parsed))
        ]
        if len(parsed) >= 3:
            agreement = {
                "method": "fleiss",
                "kappa": _f(fleiss_kappa(np.stack(preds3, axis=1))),
                "pairwise_cohen": pairs,
            }
        else:
            agreement = {"method": "cohen", "kappa": pairs[0]["kappa"], "pairwise_cohen": pairs}
    result: dict[str, Any] = {
        "study": str(Path(study_dir).resolve()),
        "n_cases": len(cases),
        "composition": {
            g: sum(1 for c in cases if (c.tb_type if c.label == "tb" else c.label) == g) for g in GOLD_ROWS
        },
        "readers": readers,
        "average": average,
        "agreement": agreement,
        "model": None,
        "tests": [],
        "bootstrap": {"n_boot": cfg.n_boot, "seed": cfg.seed, "level": cfg.level},
        "paper": {"radiologist_accuracy_3class": 0.848, "radiologist_accuracy_types": 0.687},
    }
    if pred is not None:
        probs, used = _load_predictions(Path(pred), cases, meta)
        mp = probs.argmax(axis=1)
        mm = _metrics(gold3, mp, None, boot, cfg.level)
        y = (gold3 == 2).astype(int)
        if 0 < y.sum() < len(y):
            fpr, tpr, thr = roc_curve(y, probs[:, 2])
            mm["auc"] = float(roc_auc_score(y, probs[:, 2]))
            mm["roc"] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        mm["predictions"] = str(Path(pred).resolve())
        mm["annotation_matched"] = used
        result["model"] = mm
        model_right = mp == gold3
        result["tests"] = [
            {"reader": r.name, **mcnemar(model_right, p3 == gold3)} for r, p3 in zip(parsed, preds3)
        ]
    return result


def run_compare(
    study_dir: str | Path,
    reads: list[str | Path],
    pred: str | Path | None = None,
    json_out: str | Path | None = None,
    cfg: CompareConfig | None = None,
) -> tuple[dict[str, Any], Path]:
    """:func:`compare`, then write ``study_compare.json`` (default into the study) and a provenance
    file beside it (``provenance_compare.json``); nothing is written when the inputs are bad."""
    from tbx.provenance import write_provenance

    cfg = cfg or CompareConfig()
    result = compare(study_dir, reads, pred, cfg)
    out = Path(json_out) if json_out else Path(study_dir) / COMPARE_JSON
    atomic_write_json(out, result)
    write_provenance(
        out.parent,
        cfg,
        cfg.seed,
        name="provenance_compare.json",
        reads=[str(Path(p).resolve()) for p in reads],
        pred=str(Path(pred).resolve()) if pred else None,
        output=str(out),
    )
    return result, out


# ----------------------------------------------------------------------------------------------
# simulated reader (for `tbx demo`)


def simulate_reader(
    study_dir: str | Path,
    accuracy: float = 0.848,
    type_accuracy: float = 0.687,
    seed: int = 0,
    name: str = "simulated_reader",
) -> Path:
    """Write ``reads_<name>.csv``: a SIMULATED reader (not a radiologist) for demos.

    Exactly ``round(accuracy·n)`` cases are right on the 3 classes and ``round(type_accuracy·n)``
    with TB types (defaults: the paper's radiologist, 84.8 % / 68.7 %, docs/dataset.md §1.5), as far as the
    study allows.  Error pattern: the type errors (active ↔ latent, a missed or extra type) are
    the largest group; 3-class errors are chosen at random over all cases and are mostly healthy ↔
    sick confusions, TB is called non-TB (or vice versa) less often.
    """
    if not (0 <= type_accuracy <= accuracy <= 1):
        raise TbxError("simulate_reader needs 0 ≤ type_accuracy ≤ accuracy ≤ 1")
    d = Path(study_dir)
    cases, _ = load_study(d)
    n = len(cases)
    rng = random.Random(f"tbx-simulated-reader:{seed}")
    answers = []
    for c in cases:  # start from the right answer
        answers.append(
            c.label
            if c.label != "tb"
            else (c.tb_type if c.tb_type in _TYPE_SET else rng.choice(("active", "latent")))
        )
    wrong3 = set(rng.sample(range(n), n - round(accuracy * n)))
    for i in sorted(wrong3):
        c = cases[i]
        u = rng.random()
        if c.label == "healthy":
            answers[i] = "sick" if u < 0.8 else "active"
        elif c.label == "sick":
            answers[i] = "healthy" if u < 0.6 else rng.choice(("active", "latent"))
        else:
            answers[i] = "sick" if u < 0.6 else "healthy"
    # type errors among TB cases answered TB with a known gold type
    n_type_err = round(accuracy * n) - round(type_accuracy * n)
    eligible = [
        i
        for i, c in enumerate(cases)
        if i not in wrong3 and c.label == "tb" and c.tb_type in ("active", "latent", "active+latent")
    ]
    swap = {
        "active": ("latent", "active+latent", "latent"),
        "latent": ("active", "active+latent"),
        "active+latent": ("active", "latent"),
    }
    for i in rng.sample(eligible, min(n_type_err, len(eligible))):
        answers[i] = rng.choice(swap[cases[i].tb_type])
    note = (
        f"SIMULATED reader (not a radiologist): accuracy={accuracy}, "
        f"type_accuracy={type_accuracy}, seed={seed}"
    )
    path = d / f"reads_{name}.csv"
    atomic_write_text(
        path, _csv([["case_id", "label", "comment"]] + [[c.case_id, a, note] for c, a in zip(cases, answers)])
    )
    return path
