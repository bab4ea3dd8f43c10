"""``tbx export RUN --format onnx``: the network of a run as an ONNX graph.

The graph is :meth:`tbx.models.retinanet.RetinaNet.network` at a static ``S`` × ``S`` input with a
dynamic batch: inputs ``images`` (N, 3, S, S) float, ImageNet-normalised with zeros in the padding,
and ``image_sizes`` (N, 2) int64, the valid ``(h, w)`` of each image (the SAS block masks the
padding); outputs ``probs`` (N, 3) and, per FPN level P3..P7, ``logits_k`` (N, H·W·9, C) and
``deltas_k`` (N, H·W·9, 4).  Pre-processing and post-processing (decoding, NMS) stay outside, in
tbx (:mod:`tbx.deploy.backends`), shared with the torch backend.  Deformable sampling is exported
through ``GridSample`` (opset ≥ 16), the STN's affine grid as a matmul and its adaptive pooling as
gathers (:mod:`tbx.models.spe`).  The file's metadata (key ``tbx``) carries the run config, the
input size and the run's operating points, so ``tbx screen model.onnx`` needs nothing else.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tbx.deploy.backends import ONNX_META_KEY, check_exportable, load_backend
from tbx.errors import TbxError
from tbx.io import atomic_path
from tbx.provenance import versions

MIN_OPSET = 16  # GridSample


class _Network(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, image_sizes: Tensor) -> tuple[Tensor, ...]:
        probs, logits, deltas = self.model.network(images, image_sizes)  # type: ignore[operator]
        return (probs, *logits, *deltas)


def export_onnx(run: str | Path, out: str | Path, *, input_size: int | None = None, opset: int = 17) -> Path:
    """Export the run's final checkpoint (or a ``.pt``) to ``out`` (atomic); returns ``out``."""
    from tbx.config import to_dict
    from tbx.engine.checkpoint import file_sha256

    if opset < MIN_OPSET:
        raise TbxError(
            f"--opset {opset} is below {MIN_OPSET}",
            fix=f"use --opset {MIN_OPSET} or higher (GridSample, for the deformable sampling)",
        )
    try:
        import onnx
    except ImportError:
        raise TbxError("onnx is not installed", fix='pip install "tbx[deploy]"') from None
    backend = load_backend(run, device="cpu", amp="off", input_size=input_size)
    cfg, model, size = backend.cfg, backend.model, backend.input_size
    if size % 32:
        raise TbxError(f"--input-size {size} is not a multiple of 32", fix="use e.g. 512")
    cfg.model.input_size = size
    check_exportable(cfg, model)
    net = _Network(model.to(memory_format=torch.contiguous_format)).eval()
    images = torch.zeros((1, 3, size, size))
    sizes = torch.tensor([[size, size]], dtype=torch.int64)
    n_levels = len(model.feature_sizes(size, size))
    names = ["probs", *[f"logits_{k}" for k in range(n_levels)], *[f"deltas_{k}" for k in range(n_levels)]]
    dyn = {n: {0: "batch"} for n in ["images", "image_sizes", *names]}
    out = Path(out)
    with atomic_path(out) as tmp, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings: the spatial sizes are static by design
        torch.onnx.export(
            net,
            (images, sizes),
            str(tmp),
            input_names=["images", "image_sizes"],
            output_names=names,
            dynamic_axes=dyn,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
        proto = onnx.load(str(tmp))
        meta: dict[str, Any] = {
            "model": cfg.model_name,
            "input_size": size,
            "opset": opset,
            "checkpoint_sha256": file_sha256(backend.source),
            "operating_points": backend.operating_points,
            "config": to_dict(cfg),
            "versions": versions(),
        }
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_META_KEY, json.dumps(meta)
        onnx.save(proto, str(tmp))
    return out
