"""Frames: source images → the network input (the pre-processing of ``tbx predict``) and maps in
the network's padded input frame → the source image's frame.

The input side is :func:`tbx.data.dataset.input_image` (resize keeping the aspect),
:func:`tbx.data.dataset.collate` (pad to a multiple of 32) and
:func:`tbx.data.dataset.normalize_batch` (ImageNet statistics) — the code ``tbx predict`` runs.
A map goes back by cropping the padding away (the image's valid ``h × w``), a bilinear resize to
the source ``H × W`` and a min–max scaling to [0, 1] over the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from tbx.data.dataset import Batch, Sample, collate, input_image
from tbx.errors import TbxError


def as_gray8(image: np.ndarray | Tensor) -> np.ndarray:
    """An ``H × W`` (grayscale) or ``H × W × 3`` (RGB) uint8 array or tensor → ``H × W`` uint8 for
    drawing (RGB → luminance, ITU-R 601 as Pillow)."""
    arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise TbxError(
            f"an image must be an H×W or H×W×3 uint8 array, got {arr.dtype} {arr.shape}",
            fix="decode the file with tbx.data.imageio.read_gray8 (PNG/JPEG/DICOM)",
        )
    if arr.ndim == 3:
        return np.asarray(Image.fromarray(arr, "RGB").convert("L"))
    return arr


def _rgb(image: np.ndarray | Tensor) -> Image.Image:
    arr = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    as_gray8(arr)  # validates dtype/shape
    return Image.fromarray(arr, "RGB") if arr.ndim == 3 else Image.fromarray(arr, "L").convert("RGB")


def batch_from_images(images: Sequence[np.ndarray | Tensor], input_size: int) -> Batch:
    """Source images (see :func:`as_gray8`) → a padded uint8 :class:`Batch`, as ``tbx predict``
    builds it (``Batch.scales``: source frame → input frame)."""
    samples = []
    for k, im in enumerate(images):
        rgb = _rgb(im)
        x = input_image(rgb, input_size)
        h, w = int(x.shape[1]), int(x.shape[2])
        samples.append(
            Sample(
                image=x,
                boxes=torch.zeros((0, 4)),
                labels=torch.zeros((0,), dtype=torch.int64),
                cls_label=-1,
                index=k,
                image_id=k,
                scale=(w / rgb.width, h / rgb.height),
                flipped=False,
            )
        )
    return collate(samples)


def to_source_frame(m: np.ndarray | Tensor, valid: tuple[int, int], source: tuple[int, int]) -> np.ndarray:
    """A map of the padded input frame → ``source`` ``(H, W)`` float32 in [0, 1] (see module doc)."""
    t = torch.as_tensor(np.asarray(m, dtype=np.float32) if not isinstance(m, Tensor) else m).float()
    h, w = valid
    crop = t[: int(h), : int(w)].clamp_min(0)[None, None]
    out = F.interpolate(crop, size=(int(source[0]), int(source[1])), mode="bilinear", align_corners=False)[
        0, 0
    ]
    lo, hi = float(out.min()), float(out.max())
    out = (out - lo) / (hi - lo) if hi > lo else torch.zeros_like(out)
    return out.clamp_(0, 1).numpy().astype(np.float32)
