"""The torch side of the data: a Dataset over a TBX11K layout + one COCO annotation file,
box-consistent transforms (docs/models.md §2.7), a deterministic epoch sampler and the batch collate.

Pipeline (docs/models.md §2.7): decode the PNG (grayscale → 3 channels), resize to fit ``input_size`` ×
``input_size`` keeping the aspect ratio, horizontal flip with p = 0.5 (training only, boxes flipped
too), pad to a multiple of 32 at the bottom/right, ImageNet normalisation.

Design for throughput: workers ship **uint8** images (4× fewer bytes through shared memory, pinned
memory and the host→device copy); :func:`normalize_batch` normalises on the device and zeroes the
padding, giving exactly the tensor the Detector contract (``tbx.models.base``) describes.

Determinism: the random choices (the epoch's order and each sample's flip) are drawn in the main
process by :class:`EpochBatchSampler` from a generator seeded with ``(seed, epoch)``; the dataset
receives ``(index, flip)`` keys and is itself deterministic.  Hence the data order is independent
of the number of workers and an interrupted epoch can be resumed exactly by skipping batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from tbx.data.coco import read_coco
from tbx.data.layout import IMGS, resolve_inside
from tbx.data.records import CLASS_INDEX, UNCERTAIN, Record
from tbx.errors import TbxError

# ImageNet statistics, RGB (docs/models.md §2.1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SIZE_DIVISOR = 32  # docs/models.md §2.7: pad to a multiple of 32


def resized_shape(h: int, w: int, input_size: int) -> tuple[int, int]:
    """Shape after resizing to fit ``input_size`` × ``input_size`` keeping the aspect
    (docs/models.md §2.7)."""
    scale = min(input_size / h, input_size / w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def input_image(im: Image.Image, input_size: int) -> Tensor:
    """An RGB image → the network's ``(3, h, w)`` uint8 image: resized (bilinear) to fit
    ``input_size`` × ``input_size`` keeping the aspect (docs/models.md §2.7).  Padding and normalisation
    follow in :func:`collate` and :func:`normalize_batch`."""
    h, w = resized_shape(im.height, im.width, input_size)
    if (h, w) != (im.height, im.width):
        im = im.resize((w, h), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


@dataclass
class Sample:
    image: Tensor  # (3, h, w) uint8, resized (and flipped)
    boxes: Tensor  # (K, 4) float32 xyxy in resized-image pixels
    labels: Tensor  # (K,) int64 box categories
    cls_label: int  # 0 healthy, 1 sick, 2 TB, -1 unknown (test images)
    index: int  # position in the annotation file
    image_id: int
    scale: tuple[float, float]  # (sx, sy): annotation frame → input frame
    flipped: bool


def resolve_ann(root: str | Path, ann: str | Path) -> Path:
    """An annotation file given as a path (absolute, or relative to the working folder) or
    relative to the dataset ``root``."""
    ann_path = Path(ann)
    if not ann_path.is_absolute() and not ann_path.exists():
        ann_path = Path(root) / ann_path
    return ann_path


def preflight_images(root: str | Path, ann: str | Path, strict_labels: bool = False) -> int:
    """Check, before any work, that every image ``ann`` lists exists under ``root/imgs`` (and stays
    inside it); :class:`TbxError` names the first missing file and how many are missing.  Return the
    number of images.  Used by train (each stage's file and ``--val``) and predict."""
    ann_path = resolve_ann(root, ann)
    if not ann_path.is_file():
        raise TbxError(
            "annotation file not found",
            ann_path,
            "give an existing COCO JSON (absolute or relative to the dataset root)",
        )
    records = read_coco(ann_path, strict_labels=strict_labels)
    img_dir = Path(root) / IMGS
    missing = [
        r.file_name for r in records if not resolve_inside(img_dir, r.file_name, ann_path, "imgs/").is_file()
    ]
    if missing:
        more = f" (and {len(missing) - 1} more of {len(records)})" if len(missing) > 1 else ""
        raise TbxError(
            f"image '{missing[0]}' listed in {ann_path.name} is missing{more}",
            img_dir,
            "restore the images or regenerate the annotation file",
        )
    return len(records)


class TBXDataset(Dataset):
    """Images of one COCO annotation file of a TBX11K-layout dataset, in the file's order.

    ``ann`` is a path (absolute or relative to ``root``).  Boxes are read in the annotation frame
    (the file's ``width`` × ``height``) and mapped to the resized input frame; :attr:`Sample.scale`
    maps them back.  ``train=True`` drops category-3 (uncertain) boxes (docs/protocol.md §4.3 / contract) and
    requires every image to have a derivable label; otherwise images of unknown label (``test/``)
    are allowed and get ``cls_label = -1``.

    Keys: an ``int`` index, or ``(index, flip)`` as produced by :class:`EpochBatchSampler`.
    """

    def __init__(
        self,
        root: str | Path,
        ann: str | Path,
        input_size: int = 512,
        train: bool = False,
        records: list[Record] | None = None,
    ):
        self.root = Path(root)
        self.ann_path = ann_path = resolve_ann(root, ann)
        self.input_size = int(input_size)
        self.train = train
        self.records = records if records is not None else read_coco(ann_path, strict_labels=train)
        if not self.records:
            raise TbxError("annotation file lists no images", ann_path, "use a non-empty annotation file")
        self.img_dir = self.root / IMGS

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, i: int) -> Path:
        return resolve_inside(self.img_dir, self.records[i].file_name, self.ann_path, "imgs/")

    def _load(self, i: int) -> Image.Image:
        path = self.image_path(i)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise TbxError(
                "image listed in the annotation file is missing",
                path,
                f"restore it or regenerate {self.ann_path.name}",
            ) from None
        except OSError as e:
            raise TbxError(f"cannot decode image: {e}", path, "replace the corrupt file") from None

    def __getitem__(self, key: int | tuple[int, bool]) -> Sample:
        i, flip = (key, False) if isinstance(key, (int, np.integer)) else (int(key[0]), bool(key[1]))
        rec = self.records[i]
        image = input_image(self._load(i), self.input_size)
        h, w = image.shape[1:]
        # Annotation frame → input frame (the annotation's width/height, which may differ from the
        # decoded file's size, e.g. boxes given at the original scanner resolution).
        sx, sy = w / rec.width, h / rec.height
        boxes = [b for b in rec.boxes if not (self.train and b.category == UNCERTAIN)]
        if boxes:
            xyxy = torch.tensor([b.xyxy for b in boxes], dtype=torch.float32)
            xyxy *= torch.tensor([sx, sy, sx, sy])
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, w)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, h)
            labels = torch.tensor([b.category for b in boxes], dtype=torch.int64)
        else:
            xyxy = torch.zeros((0, 4), dtype=torch.float32)
            labels = torch.zeros((0,), dtype=torch.int64)
        if flip:
            image = image.flip(-1)
            xyxy = torch.stack([w - xyxy[:, 2], xyxy[:, 1], w - xyxy[:, 0], xyxy[:, 3]], dim=1)
        return Sample(
            image=image,
            boxes=xyxy,
            labels=labels,
            cls_label=CLASS_INDEX.get(rec.label, -1),
            index=i,
            image_id=rec.image_id,
            scale=(sx, sy),
            flipped=flip,
        )


@dataclass
class Batch:
    """A padded batch.  ``images`` is uint8 ``(N, 3, H, W)`` with H, W multiples of 32; call
    :func:`normalize_batch` on the device to get the Detector input."""

    images: Tensor
    image_sizes: list[tuple[int, int]]
    targets: list[dict[str, Tensor]]
    indices: list[int]
    image_ids: list[int]
    scales: list[tuple[float, float]]
    meta: dict[str, Any] = field(default_factory=dict)

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        self.images = self.images.pin_memory()
        return self

    def __len__(self) -> int:
        return len(self.indices)

    def targets_to(self, device: torch.device | str) -> list[dict[str, Tensor]]:
        return [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in self.targets]


def collate(samples: Sequence[Sample], size_divisor: int = SIZE_DIVISOR) -> Batch:
    """Pad images at the bottom/right to a common size, a multiple of ``size_divisor``."""
    hmax = max(s.image.shape[1] for s in samples)
    wmax = max(s.image.shape[2] for s in samples)
    H = int(math.ceil(hmax / size_divisor) * size_divisor)
    W = int(math.ceil(wmax / size_divisor) * size_divisor)
    images = torch.zeros((len(samples), 3, H, W), dtype=torch.uint8)
    for k, s in enumerate(samples):
        images[k, :, : s.image.shape[1], : s.image.shape[2]] = s.image
    targets = [
        {"boxes": s.boxes, "labels": s.labels, "cls_label": torch.tensor(s.cls_label, dtype=torch.int64)}
        for s in samples
    ]
    return Batch(
        images=images,
        image_sizes=[(int(s.image.shape[1]), int(s.image.shape[2])) for s in samples],
        targets=targets,
        indices=[s.index for s in samples],
        image_ids=[s.image_id for s in samples],
        scales=[s.scale for s in samples],
    )


def normalize_batch(
    images: Tensor, image_sizes: Sequence[tuple[int, int]], dtype: torch.dtype = torch.float32
) -> Tensor:
    """uint8 ``(N, 3, H, W)`` → ImageNet-normalised float with zeros in the padding (contract of
    ``tbx.models.base``).  Runs on whatever device ``images`` is on; ``images`` itself is never
    changed (a float input is copied before the in-place steps)."""
    x = images.to(dtype=torch.float32, copy=True).div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x.sub_(mean).div_(std)
    H, W = x.shape[-2:]
    for k, (h, w) in enumerate(image_sizes):
        if h < H:
            x[k, :, h:, :] = 0
        if w < W:
            x[k, :, :, w:] = 0
    return x.to(dtype)


class EpochBatchSampler:
    """Deterministic, resumable, distributed batch sampler.

    Epoch ``e`` uses a generator seeded from ``(seed, e)``: a permutation of the dataset (padded by
    wrapping around so that every batch is full and every rank runs the same number of iterations)
    and one flip decision per position.  Global batch ``i`` is positions ``[i·B, (i+1)·B)``; rank
    ``r`` of ``world`` takes the ``r``-th contiguous slice of ``B / world`` samples, so training on
    N processes sees exactly the batches of one process.  :meth:`set_epoch` with ``start_batch``
    skips the batches already done (exact resume).  Yields lists of ``(index, flip)`` keys.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        flip_prob: float = 0.5,
    ):
        if batch_size % world_size:
            raise TbxError(
                f"batch size {batch_size} is not divisible by the number of processes {world_size}",
                fix="set the stage's batch_size to a multiple of the GPU count",
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.flip_prob = shuffle, flip_prob
        self.per_rank = batch_size // world_size
        self.epoch, self.start_batch = 0, 0

    @property
    def batches_per_epoch(self) -> int:
        return max(1, math.ceil(self.n / self.batch_size))

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "start_batch": self.start_batch}

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def epoch_keys(self, epoch: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(epoch))
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        total = self.batches_per_epoch * self.batch_size
        order = order.repeat(math.ceil(total / self.n))[:total]
        flips = torch.rand(total, generator=g) < self.flip_prob
        return order, flips

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        order, flips = self.epoch_keys(self.epoch)
        for i in range(self.start_batch, self.batches_per_epoch):
            lo = i * self.batch_size + self.rank * self.per_rank
            yield [(int(order[p]), bool(flips[p])) for p in range(lo, lo + self.per_rank)]
