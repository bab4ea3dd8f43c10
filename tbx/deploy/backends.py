"""The two inference backends of ``tbx screen``: eager torch and onnxruntime, one pipeline.

Both take the same pre-processed batch — uint8 ``(N, 3, S, S)`` padded at the bottom/right plus the
valid ``(h, w)`` of each image — normalise it with :func:`tbx.data.dataset.normalize_batch` (the
training/``tbx predict`` normalisation), run *the network* and hand its raw outputs to the model's
own post-processing, so the decoding and NMS live once (in the model class) and serve both:

- RetinaNet family: :meth:`tbx.models.retinanet.RetinaNet.network` (what ``tbx export`` puts in the
  ONNX graph: probabilities + per-level logits and box deltas) → :meth:`~RetinaNet.decode`
  (anchors, box decoding, score threshold, top-k, NMS);
- other models (torch backend only): ``model.predict`` (see :data:`NOT_EXPORTABLE`).

:func:`load_backend` opens a run directory, a ``.pt`` checkpoint or an ``.onnx`` file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tbx.data.dataset import normalize_batch
from tbx.engine.schedule import TrainConfig
from tbx.errors import TbxError
from tbx.models.base import Prediction

#: Models ``tbx export`` cannot write, and why (``tbx screen`` runs them with the torch backend).
NOT_EXPORTABLE = {
    "faster_rcnn": "torchvision's two-stage detector selects RoIs with NMS inside the network, so "
    "there is no fixed tensor boundary between the network and its post-processing",
    "fcos": "torchvision's FCOS decodes and runs NMS inside its forward (no network/post-processing split)",
    "ssd": "torchvision's SSD decodes and runs NMS inside its forward (no network/post-processing split)",
    "deformable_detr": "its network/post-processing split is not implemented yet (only the RetinaNet "
    "family has one)",
    "symformer_deformable_detr": "its network/post-processing split is not implemented yet (only the "
    "RetinaNet family has one)",
}
ONNX_META_KEY = "tbx"


def check_exportable(cfg: TrainConfig, model: nn.Module) -> None:
    if cfg.model_name in NOT_EXPORTABLE or not hasattr(model, "network"):
        why = NOT_EXPORTABLE.get(cfg.model_name, "the model has no network/post-processing split")
        raise TbxError(
            f"model {cfg.model_name} cannot be exported to ONNX: {why}",
            fix="export symformer_retinanet or retinanet; screen this model with its run/.pt",
        )


@dataclass
class Backend:
    """A loaded model: ``run(images_uint8, sizes) → [Prediction]`` in input-frame pixels."""

    name: str  # "torch" | "onnxruntime"
    cfg: TrainConfig
    model: Any  # the nn.Module (torch: the network; onnxruntime: the same class, for its decode)
    input_size: int
    device: torch.device
    source: Path  # the checkpoint or .onnx file
    operating_points: dict[str, dict] | None
    amp_dtype: torch.dtype | None = None
    session: Any = None  # onnxruntime.InferenceSession
    meta: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def run(self, images: torch.Tensor, sizes: list[tuple[int, int]]) -> list[Prediction]:
        x = normalize_batch(images.to(self.device, non_blocking=True), sizes)
        hw = (int(x.shape[-2]), int(x.shape[-1]))
        if self.session is not None:
            outs = self.session.run(
                None, {"images": x.cpu().numpy(), "image_sizes": np.asarray(sizes, dtype=np.int64)}
            )
            t = [torch.from_numpy(o) for o in outs]
            n_lv = (len(t) - 1) // 2
            return self.model.decode(t[0], t[1 : 1 + n_lv], t[1 + n_lv :], hw, sizes)
        from tbx.engine.runtime import autocast

        if self.cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.amp_dtype):
            if hasattr(self.model, "network"):
                probs, logits, deltas = self.model.network(x, sizes)
                return self.model.decode(probs.float(), logits, deltas, hw, sizes)
            return self.model.predict(x, sizes)


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise TbxError("onnxruntime is not installed", fix='pip install "tbx[deploy]"') from None
    return onnxruntime


def operating_points_beside(ckpt: Path) -> dict[str, dict] | None:
    """``operating_points.json`` of the run a checkpoint belongs to (RUN/ or RUN/stageK/)."""
    from tbx.deploy.operating_points import load_operating_points

    for folder in (ckpt.parent, ckpt.parent.parent):
        points = load_operating_points(folder)
        if points is not None:
            return points
    return None


def load_backend(
    model: str | Path,
    *,
    device: str = "auto",
    amp: str = "auto",
    input_size: int | None = None,
    threads: int | None = None,
) -> Backend:
    """A run directory / ``.pt`` checkpoint (torch backend) or an ``.onnx`` file of ``tbx export``
    (onnxruntime backend, CPU)."""
    from tbx.config import from_dict
    from tbx.engine.checkpoint import find_checkpoint, load_checkpoint
    from tbx.engine.predict import model_from_checkpoint
    from tbx.engine.runtime import resolve_amp, resolve_device
    from tbx.engine.trainer import build_from_config
    from tbx.models.inference import prepare_for_inference

    path = Path(model)
    if path.is_file() and path.suffix.lower() == ".onnx":
        ort = _import_onnxruntime()
        import onnx

        try:
            proto = onnx.load(str(path), load_external_data=False)
            meta = json.loads({p.key: p.value for p in proto.metadata_props}[ONNX_META_KEY])
        except Exception:  # noqa: BLE001 — onnx raises many types for a damaged file
            raise TbxError(
                "not an ONNX file of `tbx export`", path, "export it with `tbx export RUN`"
            ) from None
        del proto
        cfg = from_dict(TrainConfig, meta["config"])
        cfg.model.pretrained = "none"  # post-processing needs the class, not the weights
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        decoder = build_from_config(cfg).eval()
        return Backend(
            "onnxruntime",
            cfg,
            decoder,
            int(meta["input_size"]),
            torch.device("cpu"),
            path,
            meta.get("operating_points"),
            session=session,
            meta=meta,
        )
    ckpt = find_checkpoint(path)
    state = load_checkpoint(ckpt, "cpu")
    net, cfg = model_from_checkpoint(state, ckpt)
    del state
    dev = resolve_device(device)
    net.to(dev)
    prepare_for_inference(net, cfg.channels_last)
    return Backend(
        "torch",
        cfg,
        net,
        int(input_size or cfg.model.input_size),
        dev,
        ckpt,
        operating_points_beside(ckpt),
        amp_dtype=resolve_amp(amp, dev),
    )
