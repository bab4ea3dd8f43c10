"""``tbx explain``: where a model looks — heatmaps, overlays and localisation scores.

Library entry points:

- :func:`explain` — what the CLI runs: a run directory / checkpoint + (a TBX11K-layout dataset and an
  annotation file, or image files) → an output folder (layout below);
- :func:`explain_images` / :func:`heatmaps` — a loaded model + decoded images → heatmaps in each
  image's own frame (what ``tbx screen --heatmaps`` calls).

Output folder (default ``RUN/explain/<method>`` for a run directory; ``tbx report`` reads it there):

- ``heatmaps/<stem>.npy``: float32 ``H × W`` of the source image, values in [0, 1]; for
  ``--method features`` the map *after* the symmetric block, with ``heatmaps_before/<stem>.npy``;
- ``overlays/<stem>.png``: image + heatmap + predicted boxes (score ≥ ``box_thresh``) + ground truth;
- ``explain.json``: ``{"method", "target", "images": [{"file_name", "energy_in_boxes",
  "pointing_hit", …}], "mean_energy_in_boxes", "pointing_game", …}`` — scores of the images with
  ground-truth boxes (all categories, scaled from the annotation frame to the source frame), see
  :mod:`tbx.explain.scores`; images without boxes have ``null`` scores;
- ``provenance.json`` and the ownership marker.  The folder is built aside and moved into place:
  a failure leaves no partial output; an existing folder is replaced only if it is an earlier
  ``tbx explain`` output.

Pre-processing is ``tbx predict``'s (:mod:`tbx.explain.maps`); explain runs in float32 (no autocast:
gradients in bf16 are too coarse for the maps).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tbx.data.dataset import Batch, TBXDataset, collate, normalize_batch
from tbx.data.imageio import read_gray8
from tbx.data.records import Record
from tbx.engine.checkpoint import file_sha256, find_checkpoint, load_checkpoint
from tbx.engine.predict import detections_to_coco, model_from_checkpoint
from tbx.engine.schedule import TrainConfig
from tbx.errors import TbxError
from tbx.explain.cam import CAM_METHODS, CLASS_AGNOSTIC, CLASS_NAMES, TARGETS, cam_class, cam_maps
from tbx.explain.features import feature_maps, pyramid_hooks, pyramid_names
from tbx.explain.maps import batch_from_images, to_source_frame
from tbx.explain.render import render_overlay, save_png
from tbx.explain.scores import energy_in_boxes, pointing_hit, summarise
from tbx.io import atomic_dir, atomic_path, atomic_write_json, mark_output, output_kind
from tbx.models.inference import prepare_for_inference
from tbx.provenance import write_provenance

METHODS: tuple[str, ...] = (*CAM_METHODS, "features")
EXPLAIN_JSON = "explain.json"
OUTPUT_KIND = "explain"


@dataclass
class Explained:
    """One image's explanation, in the frame of the source image (``H × W``)."""

    heatmap: np.ndarray  # (H, W) float32 in [0, 1]
    before: np.ndarray | None  # features: the map before the symmetric block
    probs: np.ndarray  # (3,) p(healthy), p(sick), p(TB)
    target_class: int  # the class explained (features: the predicted class)
    detections: list[dict[str, Any]]  # COCO results: bbox [x, y, w, h] (source frame), score, category_id


def check_method(method: str, target: str) -> None:
    """A clear one-line error for an unknown method/target or a missing grad-cam package."""
    if method not in METHODS:
        raise TbxError(f"unknown explain method '{method}'", fix=f"use one of {', '.join(METHODS)}")
    if target not in TARGETS:
        raise TbxError(f"unknown explain target '{target}'", fix=f"use one of {', '.join(TARGETS)}")
    if method in CAM_METHODS:
        cam_class(method)


def explain_batch(
    model: nn.Module,
    batch: Batch,
    sources: Sequence[tuple[int, int]],
    method: str,
    target: str,
    *,
    channels_last: bool = False,
    model_name: str | None = None,
) -> list[Explained]:
    """Explain one padded uint8 :class:`Batch` (``tbx predict``'s pre-processing) whose images
    come from sources of ``(H, W)`` ``sources``; ``model`` in eval mode on its device."""
    device = next(model.parameters()).device
    with torch.inference_mode(
        False
    ):  # the CAM's backward pass needs autograd, even for a caller in inference mode
        images = normalize_batch(batch.images.to(device), batch.image_sizes)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        before = None
        if method == "features":
            before, after, preds = feature_maps(model, images, batch.image_sizes, model_name)
            classes = [int(p.probs.argmax()) for p in preds]
        else:
            after, preds, classes = cam_maps(model, images, batch.image_sizes, method, target)
    out = []
    for k, p in enumerate(preds):
        (h, w), (H, W) = batch.image_sizes[k], sources[k]
        probs = p.probs.detach().float().cpu().double().numpy()
        out.append(
            Explained(
                heatmap=to_source_frame(after[k], (h, w), (H, W)),
                before=None if before is None else to_source_frame(before[k], (h, w), (H, W)),
                probs=probs / probs.sum(),
                target_class=classes[k],
                detections=detections_to_coco(p.boxes, p.scores, p.labels, (w / W, h / H), W, H, 0),
            )
        )
    return out


def explain_images(
    model: nn.Module,
    images: Sequence[np.ndarray | Tensor],
    method: str = "gradcam",
    target: str = "pred",
    *,
    input_size: int = 512,
    batch_size: int = 4,
    model_name: str | None = None,
) -> list[Explained]:
    """Explain decoded images (``H × W`` grayscale or ``H × W × 3`` RGB, uint8) with a loaded tbx
    model (any device; put in eval mode for the call).  One :class:`Explained` per image."""
    check_method(method, target)
    was_training = model.training
    model.eval()
    out: list[Explained] = []
    try:
        for i in range(0, len(images), max(1, batch_size)):
            chunk = images[i : i + max(1, batch_size)]
            sources = [(int(im.shape[0]), int(im.shape[1])) for im in chunk]
            out += explain_batch(
                model, batch_from_images(chunk, input_size), sources, method, target, model_name=model_name
            )
    finally:
        model.train(was_training)
    return out


def heatmaps(
    model: nn.Module,
    images: Sequence[np.ndarray | Tensor],
    method: str = "gradcam",
    target: str = "pred",
    *,
    input_size: int = 512,
    batch_size: int = 4,
) -> list[np.ndarray]:
    """Heatmaps (float32 ``H × W`` of each source image, in [0, 1]) — see :func:`explain_images`."""
    return [
        e.heatmap
        for e in explain_images(model, images, method, target, input_size=input_size, batch_size=batch_size)
    ]


# --------------------------------------------------------------------------------- the command
@dataclass
class _Item:
    file_name: str
    path: Path
    record: Record | None  # the annotation (boxes, label), None for plain image files


def unique_stems(names: Sequence[str]) -> list[str]:
    """File-system-safe, unique stems: the file stem, or the whole relative path when stems repeat."""

    def clean(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9._+-]+", "_", s).lstrip(".") or "image"

    stems = [clean(Path(n).stem) for n in names]
    if len(set(stems)) < len(stems):
        stems = [clean(str(Path(n).with_suffix("")).replace("/", "__").replace("\\", "__")) for n in names]
    seen: dict[str, int] = {}
    out = []
    for s in stems:  # still equal (e.g. the same file twice): number them
        seen[s] = seen.get(s, 0) + 1
        out.append(s if seen[s] == 1 else f"{s}-{seen[s]}")
    return out


def _batches(
    items: list[_Item], ds: TBXDataset | None, size: int, batch_size: int, workers: int
) -> Iterator[tuple[list[int], Batch]]:
    """``(item indices, uint8 batch)``: through ``tbx predict``'s dataset/loader for a dataset,
    through :func:`batch_from_images` for image files."""
    if ds is not None:
        from torch.utils.data import DataLoader

        loader = DataLoader(ds, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=workers)
        for batch in loader:
            yield list(batch.indices), batch
        return
    for i in range(0, len(items), batch_size):
        idx = list(range(i, min(len(items), i + batch_size)))
        yield idx, batch_from_images([read_gray8(items[j].path) for j in idx], size)


def _default_out(model: Path, method: str) -> Path:
    if not model.is_dir():
        raise TbxError(
            "--out is needed when MODEL is a checkpoint file",
            model,
            "give --out DIR (the default RUN/explain/<method> needs a run directory)",
        )
    return model / "explain" / method


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and output_kind(out) != OUTPUT_KIND)):
        raise TbxError(
            "output folder exists and is not an earlier 'tbx explain' output",
            out,
            "choose a new --out folder (an earlier explain output is replaced)",
        )


def _items(
    data_root: Path | None, ann: Path | None, inputs: Sequence[Path], size: int, limit: int | None
) -> tuple[list[_Item], TBXDataset | None]:
    if inputs and (data_root is not None or ann is not None):
        raise TbxError(
            "give either --data/--ann or image files, not both",
            fix="tbx explain MODEL --data ROOT --ann ANN.json, or tbx explain MODEL IMG...",
        )
    if limit is not None and limit < 1:
        raise TbxError(f"--limit must be ≥ 1, got {limit}")
    if inputs:
        paths = [Path(p) for p in inputs][:limit]
        for p in paths:
            if not p.is_file():
                raise TbxError("image file not found", p, "check the path")
        return [_Item(str(p), p, None) for p in paths], None
    if data_root is None or ann is None:
        raise TbxError("nothing to explain", fix="give --data ROOT --ann ANN.json, or image files")
    ds = TBXDataset(data_root, ann, size, train=False)
    if limit is not None and limit < len(ds):
        ds = TBXDataset(data_root, ann, size, train=False, records=ds.records[:limit])
    return [_Item(r.file_name, ds.image_path(i), r) for i, r in enumerate(ds.records)], ds


def _gt_boxes(rec: Record | None, source: tuple[int, int]) -> list[list[float]]:
    """Ground-truth ``[x, y, w, h]`` scaled from the annotation frame to the source frame."""
    if rec is None:
        return []
    sx, sy = source[1] / rec.width, source[0] / rec.height
    return [[b.x * sx, b.y * sy, b.w * sx, b.h * sy] for b in rec.boxes]


def _target_text(method: str, target: str, cls: int) -> str:
    if method == "features":
        return "class-agnostic features"
    if method in CLASS_AGNOSTIC:
        return "class-agnostic (1st principal component)"
    return f"target {CLASS_NAMES[cls]}" + (" (predicted)" if target == "pred" else "")


def _score_text(e: dict[str, Any], prefix: str = "") -> str:
    if e.get("energy_in_boxes" + prefix) is None:
        return "no ground-truth boxes"
    hit = "hit" if e["pointing_hit" + prefix] else "miss"
    return f"energy in boxes {e['energy_in_boxes' + prefix]:.2f} · pointing {hit}"


def explain(
    model: str | Path,
    out: str | Path | None = None,
    *,
    data_root: str | Path | None = None,
    ann: str | Path | None = None,
    inputs: Sequence[str | Path] = (),
    method: str = "gradcam",
    target: str = "pred",
    batch_size: int = 4,
    device: str = "auto",
    workers: int = 2,
    input_size: int | None = None,
    limit: int | None = None,
    box_thresh: float = 0.3,
    model_builder: Callable[[TrainConfig], nn.Module] | None = None,
    progress: bool | None = None,
) -> Path:
    """Explain every image of ``ann`` (under ``data_root``) or the image files ``inputs`` with the
    model of a run directory / checkpoint and write the output folder (module docstring).
    Returns the folder."""
    from tbx.engine.runtime import resolve_device, use_progress_bar

    check_method(method, target)
    model = Path(model)
    ckpt = find_checkpoint(model)
    out_dir = Path(out) if out is not None else _default_out(model, method)
    _check_out(out_dir)
    if batch_size < 1:
        raise TbxError(f"--batch must be ≥ 1, got {batch_size}")
    state = load_checkpoint(ckpt, "cpu")
    net, cfg = model_from_checkpoint(state, ckpt, model_builder)
    del state
    size = int(input_size or cfg.model.input_size)
    items, ds = _items(
        Path(data_root) if data_root is not None else None,
        Path(ann) if ann is not None else None,
        [Path(p) for p in inputs],
        size,
        limit,
    )
    if method == "features":
        with pyramid_hooks(net, cfg.model_name):  # fails early for models without a symmetric block
            pass
    dev = resolve_device(device)
    net.to(dev)
    prepare_for_inference(net, cfg.channels_last)
    stems = unique_stems([it.file_name for it in items])
    names = pyramid_names(net) if method == "features" else ("", "")
    made_parent = out is None and not out_dir.parent.exists()
    bar = None
    if use_progress_bar(progress):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        bar = Progress("explain", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        bar.start()
        task = bar.add_task("explain", total=len(items))
    rows: list[dict[str, Any]] = [{} for _ in items]
    try:
        with atomic_dir(out_dir, overwrite=True) as tmp:
            for idx, batch in _batches(items, ds, size, batch_size, workers):
                grays = [read_gray8(items[j].path) for j in idx]
                res = explain_batch(
                    net,
                    batch,
                    [g.shape for g in grays],
                    method,
                    target,
                    channels_last=cfg.channels_last,
                    model_name=cfg.model_name,
                )
                for j, gray, e in zip(idx, grays, res, strict=True):
                    rows[j] = _write_item(tmp, items[j], stems[j], gray, e, method, target, box_thresh, names)
                if bar is not None:
                    bar.update(task, advance=len(idx))
            doc: dict[str, Any] = {
                "method": method,
                "target": target,
                "class_specific": method not in CLASS_AGNOSTIC and method != "features",
                "model": cfg.model_name,
                "checkpoint": str(ckpt.resolve()),
                "checkpoint_sha256": file_sha256(ckpt),
                "input_size": size,
                "annotations": str(ds.ann_path.resolve()) if ds is not None else None,
                "data_root": str(Path(data_root).resolve()) if data_root is not None else None,
                "box_score_threshold": box_thresh,
                "images": rows,
                **summarise(rows),
            }
            if method == "features":
                before = summarise(
                    [
                        {
                            "energy_in_boxes": r["energy_in_boxes_before"],
                            "pointing_hit": r["pointing_hit_before"],
                        }
                        for r in rows
                    ]
                )
                doc.update(
                    {
                        "mean_energy_in_boxes_before": before["mean_energy_in_boxes"],
                        "pointing_game_before": before["pointing_game"],
                        "maps": {"before": names[0], "after": names[1]},
                    }
                )
            atomic_write_json(tmp / EXPLAIN_JSON, doc)
            write_provenance(
                tmp,
                cfg,
                cfg.seed,
                kind="tbx-explain",
                checkpoint=str(ckpt),
                method=method,
                target=target,
                n_images=len(items),
            )
            mark_output(tmp, OUTPUT_KIND)
    finally:
        if bar is not None:
            bar.stop()
    if made_parent:
        mark_output(out_dir.parent, OUTPUT_KIND)
    return out_dir


def _write_item(
    tmp: Path,
    item: _Item,
    stem: str,
    gray: np.ndarray,
    e: Explained,
    method: str,
    target: str,
    box_thresh: float,
    names: tuple[str, str],
) -> dict[str, Any]:
    """Write one image's heatmap(s) and overlay; return its ``explain.json`` row."""
    src = (int(gray.shape[0]), int(gray.shape[1]))
    gt = _gt_boxes(item.record, src)
    row: dict[str, Any] = {
        "file_name": item.file_name,
        "image_id": item.record.image_id if item.record else None,
        "label": item.record.label if item.record else None,
        "height": src[0],
        "width": src[1],
    }
    maps = {"": e.heatmap} if e.before is None else {"": e.heatmap, "_before": e.before}
    for suffix, hm in maps.items():
        row["energy_in_boxes" + suffix] = energy_in_boxes(hm, gt) if gt else None
        row["pointing_hit" + suffix] = pointing_hit(hm, gt) if gt else None
        rel = f"heatmaps{suffix}/{stem}.npy"
        with atomic_path(tmp / rel) as p, open(p, "wb") as f:
            np.save(f, hm.astype(np.float32))
        row["heatmap" + suffix] = rel
    row.update(
        {
            "target_class": CLASS_NAMES[e.target_class],
            "pred_class": CLASS_NAMES[int(e.probs.argmax())],
            "probs": [round(float(v), 5) for v in e.probs],
        }
    )
    pred = [[*d["bbox"], d["score"]] for d in e.detections if d["score"] >= box_thresh][:10]
    probs = e.probs
    lines = [
        f"{item.file_name} · {method} · {_target_text(method, target, e.target_class)}",
        f"p(healthy) {probs[0]:.2f}  p(sick) {probs[1]:.2f}  p(TB) {probs[2]:.2f}"
        + (f" · label {row['label']}" if row["label"] else "")
        + " · "
        + _score_text(row)
        + (f" (before: {_score_text(row, '_before')})" if e.before is not None and gt else ""),
    ]
    rgb = render_overlay(gray, e.heatmap, gt=gt, pred=pred, lines=lines, before=e.before, captions=names)
    row["overlay"] = f"overlays/{stem}.png"
    save_png(tmp / row["overlay"], rgb)
    return row
