"""``tbx screen MODEL INPUT... --out DIR``: a trained model over any folder of chest X-rays.

Outputs (every file atomic; the folder carries tbx's output marker, kind ``screen``):

- ``predictions.csv``: one row per readable image, in input order — ``id, source, width, height,
  p_healthy, p_sick, p_tb, decision, threshold, n_boxes, max_box_score``.  ``decision`` is ``TB``
  when ``p_tb ≥ threshold`` (``threshold`` = ``argmax``: when p_tb is the largest of the three, the
  paper's rule); ``n_boxes`` / ``max_box_score`` describe the boxes reported in ``detections.json``.
- ``detections.json``: per image ``{id, source, width, height, decision, boxes: [{bbox [x, y, w, h]
  in original-image pixels, category active|latent, score}]}``; boxes only on images decided TB
  (the paper's filter) unless ``all_boxes``.
- ``overlays/<id>.png``: the image (longest side ≤ 512), its reported boxes, p(TB) and the decision.
- ``errors.csv``: ``source, reason`` for every input that could not be read (the run goes on).
- ``manifest.json``: model, backend, checkpoint sha256, threshold and where it came from, counts,
  versions; ``provenance.json``.

No PHI out: DICOM pixels are decoded by :func:`tbx.data.imageio.decode_gray8`, which returns pixels
only — no header value reaches any output or file name.  ``source`` is the input path as given;
with ``anonymize`` it is ``"S"`` + 16 hex digits of HMAC-SHA256(salt, path), ``id`` is that hash, the
path → hash table goes only to ``mapping`` (outside OUT), and the provenance records option names
only.

Scale: inputs are decoded in DataLoader workers and screened in batches; results go to chunk files
in ``OUT/.parts/`` (each written atomically) and are merged into the outputs at the end, so memory
does not grow with the number of images and a rerun of the same command skips every source already
screened (``.parts`` is the resume state).  Under torchrun each rank screens the inputs
``index ≡ rank (mod world)`` and rank 0 merges all ranks' chunks in input order.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import hmac
import io
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tbx.deploy.backends import Backend, load_backend
from tbx.deploy.inputs import Decoded, ScreenInputs, collate_inputs, expand_inputs
from tbx.errors import TbxError
from tbx.io import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    mark_output,
    output_kind,
)

PREDICTIONS = "predictions.csv"
DETECTIONS = "detections.json"
ERRORS = "errors.csv"
HEATMAPS = "heatmaps"  # --heatmaps: heatmaps/<id>.png (tbx explain)
PARTS = ".parts"
COLUMNS = [
    "id",
    "source",
    "width",
    "height",
    "p_healthy",
    "p_sick",
    "p_tb",
    "decision",
    "threshold",
    "n_boxes",
    "max_box_score",
]
CATEGORIES = {1: "active", 2: "latent"}
NAMED = ("sens90", "spec70", "argmax")


@dataclass
class ScreenConfig:
    """Options of :func:`screen` (the CLI's flags)."""

    threshold: str | None = None  # a probability, sens90 | spec70 | argmax; None: sens90 else argmax
    batch_size: int = 8
    workers: int = 2
    device: str = "auto"
    amp: str = "auto"
    input_size: int | None = None  # torch backend only (an ONNX graph has its own)
    threads: int | None = None  # onnxruntime intra-op threads (torch: torch.set_num_threads)
    all_boxes: bool = False
    overlays: bool = True
    heatmaps: str | None = None  # a `tbx explain` method: heatmaps/<id>.png beside the overlays
    anonymize: bool = False
    salt: str | None = None
    mapping: str | None = None
    chunk: int = 512  # images per chunk file in OUT/.parts
    progress: bool | None = None


@dataclass
class Threshold:
    name: str  # "sens90" | "spec70" | "argmax" | "value"
    value: float | None  # None: arg-max rule
    origin: str

    @property
    def column(self) -> str:
        return "argmax" if self.value is None else f"{self.value:.6g}"

    def decide(self, probs: np.ndarray) -> bool:
        if self.value is None:
            return int(np.argmax(probs)) == 2
        return bool(probs[2] >= self.value)


@dataclass
class ScreenResult:
    out: Path
    n_inputs: int
    n_screened: int  # rows in predictions.csv
    n_new: int  # screened by this run
    n_resumed: int  # skipped: already screened
    n_errors: int
    n_tb: int
    threshold: Threshold
    backend: str
    files: dict[str, str] = field(default_factory=dict)


def resolve_threshold(spec: str | None, points: dict[str, dict] | None) -> Threshold:
    """``--threshold``: a probability in [0, 1], or a named operating point of the run."""
    if spec is None:
        if points and points.get("sens90", {}).get("threshold") is not None:
            return Threshold(
                "sens90",
                float(points["sens90"]["threshold"]),
                "default: sens90 of the run's operating_points.json",
            )
        return Threshold(
            "argmax", None, "default: arg-max (the run has no operating_points.json with sens90)"
        )
    if spec == "argmax":
        return Threshold("argmax", None, "--threshold argmax (the paper's rule)")
    if spec in NAMED:
        point = (points or {}).get(spec)
        if point is None:
            raise TbxError(
                f"--threshold {spec}: the model has no operating points",
                fix="pick them on a validation set: tbx bench --gt VAL.json --pred PRED "
                "--save-operating-points RUN (or tbx train --val), or give a probability",
            )
        if point.get("threshold") is None:
            raise TbxError(
                f"--threshold {spec}: no threshold reached the target on the validation set",
                fix="give a probability, or use argmax",
            )
        return Threshold(spec, float(point["threshold"]), f"{spec} of the run's operating_points.json")
    try:
        value = float(spec)
    except ValueError:
        raise TbxError(
            f"bad --threshold {spec!r}", fix="a probability in [0, 1], sens90, spec70 or argmax"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise TbxError(f"--threshold {spec} is not a probability", fix="use a value in [0, 1]")
    return Threshold("value", value, "--threshold")


def public_source(source: str, cfg: ScreenConfig) -> str:
    if not cfg.anonymize:
        return source
    from tbx.data.build import DEFAULT_SALT

    key = (cfg.salt if cfg.salt is not None else DEFAULT_SALT).encode("utf-8")
    return "S" + hmac.new(key, source.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def image_id(source: str, public: str, cfg: ScreenConfig) -> str:
    """File-name-safe id: the hash when anonymised, else the stem + 8 hex digits of the path."""
    if cfg.anonymize:
        return public
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(source).stem)[:60].strip("._") or "image"
    return f"{stem}-{hashlib.sha256(source.encode('utf-8')).hexdigest()[:8]}"


# --------------------------------------------------------------------------------------------
# chunk files (the resume state) and the final merge


def _iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


class _ChunkWriter:
    """Buffers rows and writes them as one atomic ``.jsonl`` chunk every ``chunk`` rows."""

    def __init__(self, folder: Path, prefix: str, chunk: int):
        self.folder, self.prefix, self.chunk = folder, prefix, max(1, chunk)
        self.rows: list[dict[str, Any]] = []
        self.seq = 0

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        if len(self.rows) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows)
        atomic_write_text(self.folder / f"{self.prefix}-{self.seq:05d}.jsonl", text)
        self.seq += 1
        self.rows = []


def _done_sources(parts: Path) -> set[str]:
    done: set[str] = set()
    for p in sorted(parts.glob("pred-*.jsonl")):
        done.update(r["source"] for r in _iter_jsonl(p))
    return done


def _merged(parts: Path, pattern: str, order: dict[str, int]) -> Iterator[dict[str, Any]]:
    """Rows of every chunk matching ``pattern`` in input order (``order``: source → index; rows of
    sources no longer among the inputs are left out), first occurrence of a source kept."""

    def rows(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
        for r in _iter_jsonl(p):
            if r["source"] in order:
                yield order[r["source"]], r

    seen: set[str] = set()
    for _, r in heapq.merge(*(rows(p) for p in sorted(parts.glob(pattern))), key=lambda t: t[0]):
        if r["source"] not in seen:
            seen.add(r["source"])
            yield r


def _write_outputs(out: Path, parts: Path, order: dict[str, int]) -> tuple[int, int, int]:
    """predictions.csv, detections.json, errors.csv from the chunks; returns (rows, TB, errors)."""
    n = n_tb = 0
    screened: set[str] = set()
    with atomic_path(out / PREDICTIONS) as p_tmp, atomic_path(out / DETECTIONS) as d_tmp:
        with open(p_tmp, "w", newline="", encoding="utf-8") as pf, open(d_tmp, "w", encoding="utf-8") as df:
            w = csv.writer(pf)
            w.writerow(COLUMNS)
            df.write("[")
            for r in _merged(parts, "pred-*.jsonl", order):
                w.writerow([r[c] for c in COLUMNS])
                det = {k: r[k] for k in ("id", "source", "width", "height", "decision")}
                det["boxes"] = r["boxes"]
                df.write(("\n" if n == 0 else ",\n") + json.dumps(det, ensure_ascii=False))
                n += 1
                n_tb += r["decision"] == "TB"
                screened.add(r["source"])
            df.write("\n]\n")
    buf = io.StringIO()
    e = csv.writer(buf)
    e.writerow(["source", "reason"])
    n_err = 0
    for r in _merged(parts, "err-*.jsonl", order):
        if r["source"] not in screened:
            e.writerow([r["source"], r["reason"]])
            n_err += 1
    atomic_write_text(out / ERRORS, buf.getvalue())
    return n, n_tb, n_err


# --------------------------------------------------------------------------------------------
# overlays


def render_overlay(
    thumb: np.ndarray,
    width: int,
    boxes: list[dict[str, Any]],
    p_tb: float,
    decision: str,
    threshold: Threshold,
) -> bytes:
    """PNG bytes: the downscaled image, its boxes (red active, orange latent, with scores) and a
    banner with p(TB), the decision and the threshold."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.fromarray(thumb).convert("RGB")
    draw = ImageDraw.Draw(im)
    s = thumb.shape[1] / width
    side = max(thumb.shape)
    font = ImageFont.load_default(size=max(10, side // 32))
    lw = max(2, side // 200)
    for b in boxes:
        x, y, bw, bh = (v * s for v in b["bbox"])
        color = (230, 30, 30) if b["category"] == "active" else (255, 150, 0)
        draw.rectangle([x, y, x + bw, y + bh], outline=color, width=lw)
        draw.text(
            (x + lw, max(0, y - side // 28)), f"{b['category']} {b['score']:.2f}", fill=color, font=font
        )
    thr = "arg-max" if threshold.value is None else f"t = {threshold.value:.3f}"
    if threshold.name in ("sens90", "spec70"):
        thr += f" ({threshold.name})"
    text = f"p(TB) {p_tb:.3f}  {decision}  [{thr}]"
    box = draw.textbbox((0, 0), text, font=font)
    draw.rectangle([0, 0, box[2] + 2 * lw + 4, box[3] + 2 * lw + 4], fill=(0, 0, 0))
    draw.text((lw + 2, lw + 2), text, fill=(255, 80, 80) if decision == "TB" else (120, 230, 120), font=font)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _check_heatmaps(method: str, backend: Backend) -> None:
    """``--heatmaps`` needs the torch network (gradients) and a known `tbx explain` method."""
    from tbx.explain.run import check_method

    if backend.session is not None:
        raise TbxError(
            "--heatmaps needs the torch model (an ONNX graph has no gradients)",
            backend.source,
            "screen the run directory or its .pt checkpoint with --heatmaps",
        )
    check_method(method, "pred")


def _write_heatmaps(
    folder: Path, good: list[Decoded], rows: list[dict[str, Any]], method: str, backend: Backend
) -> None:
    """``heatmaps/<id>.png``: where the model looks (:func:`tbx.explain.heatmaps` on the overlay's
    downscaled image, target = the predicted class) with the boxes the row reports."""
    from tbx.explain import heatmaps, render_overlay
    from tbx.explain.render import png_bytes

    maps = heatmaps(backend.model, [d.thumb for d in good], method, "pred", input_size=backend.input_size)
    for d, row, heat in zip(good, rows, maps, strict=True):
        s = d.thumb.shape[1] / d.width  # original pixels → thumbnail
        boxes = [[*(v * s for v in b["bbox"]), b["score"]] for b in row["boxes"]]
        caption = f"{row['id']} · {method} · p(TB) {float(row['p_tb']):.3f} · {row['decision']}"
        rgb = render_overlay(d.thumb, heat, pred=boxes, lines=[caption])
        atomic_write_bytes(folder / f"{row['id']}.png", png_bytes(rgb))


# --------------------------------------------------------------------------------------------
# the run


def _prepare_out(out: Path, cfg: ScreenConfig) -> Path:
    if out.exists():
        if not out.is_dir():
            raise TbxError("--out is a file", out, "give a folder")
        kind = output_kind(out)
        if kind not in (None, "screen") or (kind is None and any(out.iterdir())):
            raise TbxError(
                "--out is a non-empty folder that tbx screen did not create",
                out,
                "choose a new folder (tbx never writes into folders it does not own)",
            )
    if cfg.mapping:
        m, o = Path(cfg.mapping).resolve(), out.resolve()
        if m == o or m.is_relative_to(o):
            raise TbxError(
                "the --mapping file must lie outside --out (it re-identifies images)",
                cfg.mapping,
                "write it to a private folder",
            )
    if cfg.salt is not None and not cfg.anonymize:
        raise TbxError("--salt without --anonymize", fix="add --anonymize (or drop --salt)")
    mark_output(out, "screen")
    (out / PARTS).mkdir(exist_ok=True)
    return out / PARTS


def _row(d: Decoded, pred: Any, source: str, ident: str, thr: Threshold, all_boxes: bool) -> dict[str, Any]:
    from tbx.engine.predict import detections_to_coco

    probs = pred.probs.detach().float().cpu().double().numpy()
    probs = probs / probs.sum()
    decision = "TB" if thr.decide(probs) else "non-TB"
    h, w = d.size
    boxes = []
    if all_boxes or decision == "TB":
        for c in detections_to_coco(
            pred.boxes, pred.scores, pred.labels, (w / d.width, h / d.height), d.width, d.height, 0
        ):
            boxes.append(
                {
                    "bbox": c["bbox"],
                    "category": CATEGORIES.get(c["category_id"], str(c["category_id"])),
                    "score": c["score"],
                }
            )
    return {
        "index": d.index,
        "id": ident,
        "source": source,
        "width": d.width,
        "height": d.height,
        "p_healthy": f"{probs[0]:.6f}",
        "p_sick": f"{probs[1]:.6f}",
        "p_tb": f"{probs[2]:.6f}",
        "decision": decision,
        "threshold": thr.column,
        "n_boxes": len(boxes),
        "max_box_score": f"{max(b['score'] for b in boxes):.5f}" if boxes else "",
        "boxes": boxes,
    }


def screen(
    model: str | Path,
    inputs: list[str | Path],
    out: str | Path,
    cfg: ScreenConfig | None = None,
    backend: Backend | None = None,
) -> ScreenResult:
    """Screen ``inputs`` with ``model`` (run dir, ``.pt`` or ``.onnx``) into ``out`` (module docstring).
    Raises :class:`TbxError` (exit 2) only when no input at all could be read."""
    from tbx.engine import distributed as D
    from tbx.engine.runtime import use_progress_bar
    from tbx.provenance import versions, write_provenance

    cfg = cfg or ScreenConfig()
    out = Path(out)
    onnx_model = Path(model).suffix.lower() == ".onnx"
    cuda = not onnx_model and cfg.device != "cpu" and torch.cuda.is_available()
    ctx = D.init_distributed("cuda" if cuda else "cpu")  # first: it selects this rank's GPU
    try:
        if backend is None:
            backend = load_backend(
                model, device=cfg.device, amp=cfg.amp, input_size=cfg.input_size, threads=cfg.threads
            )
        thr = resolve_threshold(cfg.threshold, backend.operating_points)
        if cfg.heatmaps:
            _check_heatmaps(cfg.heatmaps, backend)
        sources = expand_inputs(inputs)
        public = [public_source(s, cfg) for s in sources]
        order = {p: i for i, p in enumerate(public)}
        parts = _prepare_out(out, cfg) if ctx.is_main else out / PARTS
        D.barrier(ctx)
        done = _done_sources(parts)
        if ctx.is_main:
            for old in parts.glob("err-*.jsonl"):  # errors are retried; stale ones go
                old.unlink()
            if cfg.mapping:
                buf = io.StringIO()
                csv.writer(buf).writerows([("source", "hash"), *zip(sources, public, strict=True)])
                atomic_write_text(cfg.mapping, buf.getvalue())
        D.barrier(ctx)
        pending = [
            (i, s) for i, s in enumerate(sources) if public[i] not in done and i % ctx.world_size == ctx.rank
        ]
        run_id = f"{int(time.time() * 1000):x}-{os.getpid():x}"
        preds = _ChunkWriter(parts, f"pred-{run_id}-r{ctx.rank}", cfg.chunk)
        errs = _ChunkWriter(parts, f"err-{run_id}-r{ctx.rank}", cfg.chunk)
        overlays = out / "overlays"
        if cfg.overlays:
            overlays.mkdir(exist_ok=True)
        if cfg.heatmaps:
            (out / HEATMAPS).mkdir(exist_ok=True)
        loader = torch.utils.data.DataLoader(
            ScreenInputs(pending, backend.input_size),
            batch_size=cfg.batch_size,
            shuffle=False,
            num_workers=cfg.workers if pending else 0,
            collate_fn=collate_inputs,
            pin_memory=backend.device.type == "cuda",
        )
        bar = None
        if ctx.is_main and use_progress_bar(cfg.progress):
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            bar = Progress("screen", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            bar.start()
            task = bar.add_task("screen", total=len(pending))
        n_new = 0
        try:
            for good, bad in loader:
                for e in bad:
                    errs.add({"source": public[e.index], "reason": e.reason})
                if good:
                    images = torch.stack([d.image for d in good])
                    results = backend.run(images, [d.size for d in good])
                    rows = []
                    for d, p in zip(good, results, strict=True):
                        ident = image_id(sources[d.index], public[d.index], cfg)
                        row = _row(d, p, public[d.index], ident, thr, cfg.all_boxes)
                        if cfg.overlays:
                            atomic_write_bytes(
                                overlays / f"{ident}.png",
                                render_overlay(
                                    d.thumb, d.width, row["boxes"], float(row["p_tb"]), row["decision"], thr
                                ),
                            )
                        preds.add(row)
                        rows.append(row)
                        n_new += 1
                    if cfg.heatmaps:
                        _write_heatmaps(out / HEATMAPS, good, rows, cfg.heatmaps, backend)
                if bar is not None:
                    bar.update(task, advance=len(good) + len(bad))
        finally:
            preds.flush()
            errs.flush()
            if bar is not None:
                bar.stop()
        D.barrier(ctx)
        result = ScreenResult(out, len(sources), 0, n_new, len(done & set(public)), 0, 0, thr, backend.name)
        if ctx.is_main:
            result.n_screened, result.n_tb, result.n_errors = _write_outputs(out, parts, order)
            result.n_new = result.n_screened - result.n_resumed
            result.files = {
                "predictions": PREDICTIONS,
                "detections": DETECTIONS,
                "errors": ERRORS,
                "overlays": "overlays/" if cfg.overlays else "",
                "heatmaps": f"{HEATMAPS}/" if cfg.heatmaps else "",
            }
            manifest = {
                "model": backend.cfg.model_name,
                "backend": backend.name,
                "model_file": str(backend.source.resolve()),
                "checkpoint_sha256": backend.meta.get("checkpoint_sha256") or _sha256(backend.source),
                "input_size": backend.input_size,
                "device": str(backend.device),
                "threshold": {"name": thr.name, "value": thr.value, "origin": thr.origin},
                "operating_points": backend.operating_points,
                "boxes": "all images" if cfg.all_boxes else "images decided TB (the paper's filter)",
                "anonymized": cfg.anonymize,
                "counts": {
                    "inputs": result.n_inputs,
                    "screened": result.n_screened,
                    "screened_this_run": result.n_new,
                    "resumed": result.n_resumed,
                    "errors": result.n_errors,
                    "decided_tb": result.n_tb,
                },
                "world_size": ctx.world_size,
                "files": result.files,
                "versions": versions(),
            }
            atomic_write_json(out / "manifest.json", manifest)
            extra: dict[str, Any] = {"model": str(model)}
            path = write_provenance(out, None, None, **extra)
            if cfg.anonymize:  # the command line carries input paths: keep the verb and option names
                prov = json.loads(path.read_text())
                prov["command"] = [
                    "tbx",
                    "screen",
                    "<MODEL>",
                    "<INPUT>...",
                    *[a.split("=")[0] for a in prov["command"] if a.startswith("--")],
                ]
                atomic_write_json(path, prov)
        D.barrier(ctx)
    finally:
        D.shutdown(ctx)
    if ctx.is_main and result.n_screened == 0:
        raise TbxError(
            f"no input could be read ({result.n_errors} unreadable, see {out / ERRORS})",
            fix="give PNG, JPEG, TIFF or DICOM files",
        )
    return result


def _sha256(path: Path) -> str:
    from tbx.engine.checkpoint import file_sha256

    return file_sha256(path)
