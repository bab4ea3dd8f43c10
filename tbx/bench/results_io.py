"""Prediction files in the authors' format (docs/protocol.md §4.1): read, validate and write.

- ``cls_result.txt``: one line per image of the evaluated annotation file, in its image order, three
  probabilities ``p(healthy) p(sick) p(TB)`` separated by white space (softmax of the head's logits).
- ``bbox_result.json``: a COCO results list ``[{"image_id", "category_id", "bbox": [x, y, w, h],
  "score"}, ...]``.

Readers reject bad input with one :class:`~tbx.errors.TbxError` naming the file and line (and, for
JSON, the index of the offending detection).  Writers are atomic (:mod:`tbx.io`), so the engine's
prediction writer can call them directly.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tbx.errors import TbxError, where
from tbx.io import atomic_write_text

CLS_RESULT = "cls_result.txt"
BBOX_RESULT = "bbox_result.json"
SUM_TOL = 1e-3  # rows of cls_result.txt must sum to 1 within this tolerance


# ----------------------------------------------------------------------------------- cls_result
def write_cls_result(path: str | Path, probs: np.ndarray) -> None:
    """Write ``probs`` (N, 3) as ``cls_result.txt`` (atomic; 8 significant digits like the authors')."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != 3:
        raise ValueError(f"probs must have shape (N, 3), got {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contain NaN or infinite values")
    lines = [" ".join(f"{v:.8g}" for v in row) for row in probs.tolist()]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def read_cls_result(path: str | Path, n_expected: int | None = None) -> np.ndarray:
    """Read ``cls_result.txt`` → float64 array (N, 3); validate every line.

    Errors (one :class:`TbxError`, naming ``file:line``): missing or empty file, a line without
    exactly three numbers, a non-finite or negative value, a row not summing to 1 (± 1e-3), or a
    number of lines different from ``n_expected`` (the images of the annotation file).
    """
    path = Path(path)
    if not path.is_file():
        raise TbxError(
            "classification result file not found",
            path,
            f"write one line per image ('{CLS_RESULT}', see docs/protocol.md §4.1)",
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # tolerate trailing blank lines
        lines.pop()
    if not lines:
        raise TbxError(
            "classification result file is empty",
            path,
            "write one line 'p(healthy) p(sick) p(TB)' per image of the annotation file",
        )
    if n_expected is not None and len(lines) != n_expected:
        raise TbxError(
            f"{len(lines)} lines but the annotation file has {n_expected} images",
            where(path, n_expected + 1 if len(lines) > n_expected else len(lines)),
            "predict on the same image list, in the order of the annotation file",
        )
    fix = "each line must hold 3 probabilities 'p(healthy) p(sick) p(TB)' summing to 1"
    try:  # fast path: a well-formed file parses in one call
        arr = np.array([ln.split() for ln in lines], dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise ValueError
    except ValueError:
        arr = None
    if arr is None:  # locate the first malformed line
        for i, ln in enumerate(lines, 1):
            toks = ln.split()
            if len(toks) != 3:
                raise TbxError(f"expected 3 numbers, found {len(toks)}", where(path, i), fix)
            try:
                [float(t) for t in toks]
            except ValueError:
                raise TbxError(f"not a number in '{ln.strip()[:60]}'", where(path, i), fix) from None
        raise AssertionError("unreachable")  # pragma: no cover
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        i = int(np.argmax(bad)) + 1
        raise TbxError("NaN or infinite probability", where(path, i), fix)
    bad = (arr < 0).any(axis=1) | (arr > 1 + SUM_TOL).any(axis=1)
    if bad.any():
        i = int(np.argmax(bad)) + 1
        raise TbxError("probability outside [0, 1]", where(path, i), fix)
    s = arr.sum(axis=1)
    bad = np.abs(s - 1.0) > SUM_TOL
    if bad.any():
        i = int(np.argmax(bad)) + 1
        raise TbxError(
            f"probabilities sum to {s[i - 1]:.6g}, not 1 (± {SUM_TOL:g})",
            where(path, i),
            "write softmax probabilities, not logits",
        )
    return arr


# ---------------------------------------------------------------------------------- bbox_result
@dataclass
class Detections:
    """COCO results as arrays (file order): ``boxes`` (D, 4) xywh, ``scores``, ids."""

    image_id: np.ndarray  # (D,) int64
    category_id: np.ndarray  # (D,) int64
    boxes: np.ndarray  # (D, 4) float64, xywh
    scores: np.ndarray  # (D,) float64

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0))

    def to_dicts(self) -> list[dict[str, Any]]:
        return [
            {"image_id": int(i), "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
            for i, c, b, s in zip(
                self.image_id.tolist(), self.category_id.tolist(), self.boxes.tolist(), self.scores.tolist()
            )
        ]


def _line_of_entry(text: str, index: int) -> int | None:
    """1-based line where the ``index``-th element of the top-level JSON array starts."""
    dec = json.JSONDecoder()
    pos = text.index("[") + 1
    n = len(text)
    for k in range(index + 1):
        while pos < n and text[pos] in " \t\r\n,":
            pos += 1
        if k == index:
            return text.count("\n", 0, pos) + 1
        try:
            _, pos = dec.raw_decode(text, pos)
        except json.JSONDecodeError:
            return None
    return None


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_entry(d: Any, valid_images: set[int] | None, valid_cats: set[int] | None) -> str | None:
    """Why detection ``d`` is invalid, or None."""
    if not isinstance(d, dict):
        return "a detection must be an object {image_id, category_id, bbox, score}"
    for key in ("image_id", "category_id", "bbox", "score"):
        if key not in d:
            return f"missing key '{key}'"
    if not isinstance(d["image_id"], int) or isinstance(d["image_id"], bool):
        return f"image_id must be an integer, got {d['image_id']!r}"
    if not isinstance(d["category_id"], int) or isinstance(d["category_id"], bool):
        return f"category_id must be an integer, got {d['category_id']!r}"
    if valid_images is not None and d["image_id"] not in valid_images:
        return f"unknown image_id {d['image_id']} (not in the annotation file)"
    if valid_cats is not None and d["category_id"] not in valid_cats:
        return f"unknown category_id {d['category_id']} (valid: {sorted(valid_cats)})"
    b = d["bbox"]
    if not isinstance(b, (list, tuple)) or len(b) != 4 or not all(_is_num(v) for v in b):
        return f"bbox must be [x, y, w, h] (4 numbers), got {b!r}"
    if not all(math.isfinite(v) for v in b):
        return "bbox has NaN or infinite values"
    if b[2] < 0 or b[3] < 0:
        return f"negative box size w={b[2]}, h={b[3]}"
    s = d["score"]
    if not _is_num(s) or not math.isfinite(s):
        return f"score must be a finite number, got {s!r}"
    return None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while ~10⁵ small dicts are built and converted.

    A detection file is a flat tree of new containers; the collector would traverse it again and
    again while it grows (about 3× the parse time) and finds nothing to free.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _loads(raw: bytes) -> Any:
    """``json.loads``, through orjson when installed (3-5× faster on a 100k-detection file).

    orjson rejects the non-standard ``NaN``/``Infinity`` literals that ``json`` accepts; such a
    file goes through ``json`` so that the entry check names the offending detection.
    """
    try:
        import orjson
    except ImportError:
        return json.loads(_text(raw))
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(_text(raw))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def read_bbox_arrays(
    path: str | Path,
    valid_image_ids: Iterable[int] | None = None,
    valid_category_ids: Iterable[int] | None = None,
) -> Detections:
    """Read and validate ``bbox_result.json`` into :class:`Detections` (file order kept)."""
    path = Path(path)
    if not path.is_file():
        raise TbxError("detection result file not found", path, f"write COCO results ('{BBOX_RESULT}')")
    raw = path.read_bytes()  # decoded only when orjson is absent or an error must name a line
    if not raw or raw.isspace():
        raise TbxError(
            "detection result file is empty",
            where(path, 1),
            "write a JSON list of detections ('[]' when there are none)",
        )
    with _gc_paused():
        return _read_bbox_bytes(path, raw, valid_image_ids, valid_category_ids)


def _read_bbox_bytes(
    path: Path, raw: bytes, valid_image_ids: Iterable[int] | None, valid_category_ids: Iterable[int] | None
) -> Detections:
    try:
        data = _loads(raw)
    except json.JSONDecodeError as e:
        raise TbxError(
            f"invalid JSON: {e.msg}",
            where(path, e.lineno),
            "regenerate the file (a JSON list of COCO detections)",
        ) from None
    if not isinstance(data, list):
        raise TbxError(
            "detection results must be a JSON list of detections",
            where(path, 1),
            'write [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]',
        )
    if not data:
        return Detections.empty()
    vimg = set(int(i) for i in valid_image_ids) if valid_image_ids is not None else None
    vcat = set(int(c) for c in valid_category_ids) if valid_category_ids is not None else None
    dets = None
    try:  # fast vectorised path; any irregularity falls back to the per-entry check below
        img = np.array([d["image_id"] for d in data])
        cat = np.array([d["category_id"] for d in data])
        bbox = [d["bbox"] for d in data]
        if set(map(type, bbox)) != {list} or set(map(len, bbox)) != {4}:
            raise ValueError("a bbox that is not a list of 4 values")
        box = np.fromiter(itertools.chain.from_iterable(bbox), np.float64, 4 * len(bbox)).reshape(-1, 4)
        sc_list = [d["score"] for d in data]
        sc = np.array(sc_list, dtype=np.float64)
        ok = (
            img.dtype.kind == "i"
            and cat.dtype.kind == "i"
            and box.shape == (len(data), 4)
            and np.isfinite(box).all()
            and (box[:, 2:] >= 0).all()
            and np.isfinite(sc).all()
            and bool not in set(map(type, sc_list))
        )
        if ok and vimg is not None:
            ok = bool(np.isin(img, np.fromiter(vimg, np.int64, len(vimg))).all())
        if ok and vcat is not None:
            ok = bool(np.isin(cat, np.fromiter(vcat, np.int64, len(vcat))).all())
        if ok:
            dets = Detections(img.astype(np.int64), cat.astype(np.int64), box, sc)
    except (KeyError, TypeError, ValueError):
        dets = None
    if dets is not None:
        return dets
    for i, d in enumerate(data):
        why = _check_entry(d, vimg, vcat)
        if why is not None:
            line = _line_of_entry(_text(raw), i)
            loc = f"{where(path, line)} (detection #{i})" if line else f"{path} (detection #{i})"
            raise TbxError(why, loc, "fix or regenerate the detection results (docs/protocol.md §4.1)")
    raise AssertionError("unreachable")  # pragma: no cover


def read_bbox_result(
    path: str | Path,
    valid_image_ids: Iterable[int] | None = None,
    valid_category_ids: Iterable[int] | None = None,
) -> list[dict[str, Any]]:
    """Read and validate ``bbox_result.json`` → list of COCO result dicts (file order)."""
    return read_bbox_arrays(path, valid_image_ids, valid_category_ids).to_dicts()


def write_bbox_result(path: str | Path, dets: list[dict[str, Any]]) -> None:
    """Write COCO detection results (atomic, compact one-line JSON like mmdetection's)."""
    out = []
    for i, d in enumerate(dets):
        why = _check_entry(d, None, None)
        if why is not None:
            raise ValueError(f"detection #{i}: {why}")
        out.append(
            {
                "image_id": int(d["image_id"]),
                "category_id": int(d["category_id"]),
                "bbox": [float(v) for v in d["bbox"]],
                "score": float(d["score"]),
            }
        )
    atomic_write_text(path, json.dumps(out, separators=(",", ":"), allow_nan=False) + "\n")
