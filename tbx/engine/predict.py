"""Inference → the official prediction files (docs/protocol.md §4.1).

``predict(checkpoint, data_root, ann, out_dir)`` writes into ``out_dir``:

- ``cls_result.txt``: one line per image of ``ann`` **in its order**, ``p(healthy) p(sick) p(TB)``;
- ``bbox_result.json``: COCO results with the image ids of ``ann``, category 1 active / 2 latent,
  boxes ``[x, y, w, h]`` in the frame of the annotation file's ``width`` × ``height`` (the original
  image pixels), and the score;
- ``manifest.json``: model, checkpoint path + sha256, resolved config, image-list hash, versions;
- ``provenance.json``.

Batched, AMP on CUDA (bf16 by default), images shipped as uint8 and normalised on the device.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from tbx.bench.results_io import BBOX_RESULT, CLS_RESULT, write_bbox_result, write_cls_result
from tbx.config import from_dict
from tbx.data.dataset import TBXDataset, collate, normalize_batch, preflight_images, resolve_ann
from tbx.data.layout import IMGS
from tbx.engine.checkpoint import file_sha256, find_checkpoint, load_checkpoint, load_model_weights, unwrap
from tbx.engine.runtime import ProgressBar, autocast, resolve_amp, resolve_device, use_progress_bar
from tbx.engine.schedule import TrainConfig
from tbx.errors import TbxError
from tbx.io import atomic_dir, atomic_write_json, check_replaceable
from tbx.models.inference import prepare_for_inference
from tbx.models.registry import build
from tbx.provenance import versions, write_provenance

PREDICTIONS_KIND = "predictions"  # the output marker of a prediction folder (tbx.io.mark_output)


@torch.no_grad()
def predict_dataset(
    model: nn.Module,
    dataset: TBXDataset,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    workers: int = 2,
    channels_last: bool = True,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Run ``model.predict`` over ``dataset`` in order.  Returns the (N, 3) probabilities and the
    COCO detections (image ids of the annotation file, xywh in the annotation frame)."""
    net: Any = unwrap(model)  # a Detector (duck-typed: test doubles too)
    was_training = net.training
    net.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    probs = np.zeros((len(dataset), 3), dtype=np.float64)
    dets: list[dict[str, Any]] = []
    try:
        for batch in loader:
            images = normalize_batch(batch.images.to(device, non_blocking=True), batch.image_sizes)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                preds = net.predict(images, batch.image_sizes)
            for k, p in enumerate(preds):
                idx = batch.indices[k]
                rec = dataset.records[idx]
                pr = p.probs.detach().float().cpu().double().numpy()
                probs[idx] = pr / pr.sum()
                dets.extend(
                    detections_to_coco(
                        p.boxes, p.scores, p.labels, batch.scales[k], rec.width, rec.height, rec.image_id
                    )
                )
            if progress is not None:
                progress(len(batch))
    finally:
        net.train(was_training)
    return probs, dets


def detections_to_coco(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    labels: torch.Tensor,
    scale: tuple[float, float],
    width: int,
    height: int,
    image_id: int,
) -> list[dict[str, Any]]:
    """Input-frame xyxy boxes → COCO results in the annotation frame (``width`` × ``height``)."""
    if boxes.numel() == 0:
        return []
    b = boxes.detach().float().cpu().double().numpy().copy()
    sx, sy = scale
    b[:, 0::2] = np.clip(b[:, 0::2] / sx, 0, width)
    b[:, 1::2] = np.clip(b[:, 1::2] / sy, 0, height)
    s = scores.detach().float().cpu().numpy()
    c = labels.detach().cpu().numpy()
    out = []
    for (x1, y1, x2, y2), sc, cat in zip(b.tolist(), s.tolist(), c.tolist()):
        out.append(
            {
                "image_id": int(image_id),
                "category_id": int(cat),
                "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                "score": round(float(sc), 5),
            }
        )
    return out


def write_predictions(out_dir: str | Path, probs: np.ndarray, dets: list[dict[str, Any]]) -> None:
    """``cls_result.txt`` + ``bbox_result.json`` with the bench library's writers (atomic)."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_cls_result(out / CLS_RESULT, probs)
    write_bbox_result(out / BBOX_RESULT, dets)


def evaluate_predictions(gt_path: str | Path, pred_dir: str | Path) -> dict[str, float]:
    """Score a prediction folder with the bench library (``tbx.bench.protocol.evaluate``) and
    flatten the headline numbers: ``accuracy``, ``auc`` (classification, docs/protocol.md §4.2) and
    ``cat_agnostic_ap50`` / ``cat_agnostic_ap`` (tb-only mode, category-agnostic, docs/protocol.md §4.3)."""
    from tbx.bench.protocol import BenchConfig, evaluate

    res = evaluate(gt_path, pred_dir, BenchConfig(mode="tb-only"))
    out: dict[str, float] = {}
    cls = res.get("classification") or {}
    for k in ("accuracy", "auc", "sensitivity", "specificity"):
        if isinstance(cls.get(k), (int, float)):
            out[k] = float(cls[k])
    row = ((res.get("detection") or {}).get("tb_only") or {}).get("agnostic") or {}
    for k in ("ap50", "ap"):
        if isinstance(row.get(k), (int, float)):
            out[f"cat_agnostic_{k}"] = float(row[k])
    return out


def image_list_hash(dataset: TBXDataset) -> str:
    h = hashlib.sha256()
    for r in dataset.records:
        h.update(f"{r.image_id}\t{r.file_name}\t{r.width}\t{r.height}\n".encode())
    return h.hexdigest()


def model_from_checkpoint(
    state: dict[str, Any],
    where: Path,
    model_builder: Callable[[TrainConfig], nn.Module] | None = None,
) -> tuple[nn.Module, TrainConfig]:
    try:
        cfg = from_dict(TrainConfig, state.get("config") or {})
    except TbxError as e:
        raise TbxError(
            f"checkpoint config is invalid: {e.what}",
            where,
            "use a checkpoint written by this version of tbx",
        ) from None
    # the checkpoint holds every weight: no backbone file needed (P2T's ImageNet file is not downloadable)
    bare = replace(cfg, model=replace(cfg.model, pretrained="none"))
    model = model_builder(bare) if model_builder else build(bare.model_name, bare.model)
    load_model_weights(model, state["model"], where)
    if hasattr(model, "set_stage"):
        cast(Any, model).set_stage(int(state.get("stage", 1)))
    return model, cfg


def predict(
    checkpoint: str | Path,
    data_root: str | Path,
    ann: str | Path,
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    device: str = "auto",
    amp: str = "auto",
    workers: int = 2,
    input_size: int | None = None,
    model_builder: Callable[[TrainConfig], nn.Module] | None = None,
    progress: bool | None = None,
) -> Path:
    """Predict every image of ``ann`` with a run's final checkpoint (or a checkpoint file) and
    write the official files into ``out_dir`` (see the module docstring).  Returns ``out_dir``."""
    out = Path(out_dir)
    if batch_size < 1:
        raise TbxError(f"batch size must be ≥ 1, got {batch_size}", fix="use e.g. --batch 8")
    ckpt = find_checkpoint(checkpoint)
    inputs = [ckpt, resolve_ann(data_root, ann), Path(data_root) / IMGS]
    check_replaceable(out, PREDICTIONS_KIND, inputs)  # before any work
    preflight_images(data_root, ann)
    state = load_checkpoint(ckpt, "cpu")
    model, cfg = model_from_checkpoint(state, ckpt, model_builder)
    del state
    dev = resolve_device(device)
    amp_dtype = resolve_amp(amp, dev)
    model.to(dev)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    prepare_for_inference(model, cfg.channels_last)  # BN folded into the convolutions, NHWC
    size = int(input_size or cfg.model.input_size)
    ds = TBXDataset(data_root, ann, size, train=False)
    bar = ProgressBar("predict", total=len(ds), enabled=use_progress_bar(progress))
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        bar.update(completed=done[0])

    try:
        probs, dets = predict_dataset(
            model,
            ds,
            batch_size,
            dev,
            amp_dtype,
            workers=workers,
            channels_last=cfg.channels_last,
            progress=advance,
        )
    finally:
        bar.close()
    manifest = {
        "model": cfg.model_name,
        "checkpoint": str(ckpt.resolve()),
        "checkpoint_sha256": file_sha256(ckpt),
        "annotations": str(ds.ann_path.resolve()),
        "data_root": str(Path(data_root).resolve()),
        "n_images": len(ds),
        "image_list_sha256": image_list_hash(ds),
        "n_detections": len(dets),
        "input_size": size,
        "device": str(dev),
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "off",
        "files": {"cls": CLS_RESULT, "bbox": BBOX_RESULT},
        "config": json.loads(json.dumps(state_config(cfg))),
        "versions": versions(),
    }
    with atomic_dir(out, overwrite=True, kind=PREDICTIONS_KIND, inputs=inputs) as tmp:
        write_predictions(tmp, probs, dets)
        atomic_write_json(tmp / "manifest.json", manifest)
        write_provenance(tmp, cfg, cfg.seed, checkpoint=str(ckpt), annotations=str(ds.ann_path))
    return out


def state_config(cfg: TrainConfig) -> dict[str, Any]:
    from tbx.config import to_dict

    return to_dict(cfg)
