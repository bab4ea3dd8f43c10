"""Test fixtures for the training engine: small Detectors implementing the contract of
``tbx.models.base`` and a tiny TBX11K-layout dataset written from scratch (PNG + COCO JSON)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tbx.data.coco import write_coco
from tbx.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from tbx.data.records import Box, Record
from tbx.models.base import Detector, Prediction


class TinyDetector(Detector):
    """A few convs (with BatchNorm in the backbone), one box regressor and the image-class head.

    Stage 1 loss: L1 between a predicted normalised box and the first GT box, plus a small
    objectness BCE; stage 2: the weighted cross-entropy of the class head (``Detector.cls_loss``).
    """

    def __init__(self, width: int = 8, nan_after: int | None = None):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.neck = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.box_reg = nn.Linear(2 * width, 4)
        self.obj = nn.Linear(2 * width, 1)
        self.cls_head = nn.Sequential(
            nn.Conv2d(2 * width, 2 * width, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * width, 3),
        )
        self.nan_after = nan_after
        self.calls = 0

    def forward(self, images, targets, image_sizes):
        self.calls += 1
        c = self.backbone(images)
        if self.stage == 2:
            logits = self.cls_head(c)
            labels = torch.stack([t["cls_label"] for t in targets])
            return {"loss_img_cls": self.cls_loss(logits, labels)}
        f = torch.relu(self.neck(c)).mean(dim=(2, 3))
        box = torch.sigmoid(self.box_reg(f))
        obj = self.obj(f).squeeze(1)
        l1, has = [], []
        for k, t in enumerate(targets):
            h, w = image_sizes[k]
            if len(t["boxes"]):
                gt = t["boxes"][0] / torch.tensor([w, h, w, h], dtype=torch.float32, device=box.device)
                l1.append((box[k] - gt).abs().sum())
                has.append(1.0)
            else:
                has.append(0.0)
        loss_box = torch.stack(l1).mean() if l1 else box.sum() * 0
        loss_obj = nn.functional.binary_cross_entropy_with_logits(obj, torch.tensor(has, device=obj.device))
        if self.nan_after is not None and self.calls > self.nan_after:
            loss_box = loss_box * float("nan")
        return {"loss_box": loss_box, "loss_obj": 0.1 * loss_obj}

    @torch.no_grad()
    def predict(self, images, image_sizes):
        c = self.backbone(images)
        probs = torch.softmax(self.cls_head(c), dim=1)
        f = torch.relu(self.neck(c)).mean(dim=(2, 3))
        box = torch.sigmoid(self.box_reg(f))
        score = torch.sigmoid(self.obj(f)).squeeze(1)
        out = []
        for k, (h, w) in enumerate(image_sizes):
            b = box[k] * torch.tensor([w, h, w, h], dtype=torch.float32)
            x1, x2 = torch.minimum(b[0], b[2]), torch.maximum(b[0], b[2])
            y1, y2 = torch.minimum(b[1], b[3]), torch.maximum(b[1], b[3])
            out.append(
                Prediction(
                    probs[k],
                    torch.stack([x1, y1, x2, y2])[None],
                    score[k : k + 1],
                    torch.ones(1, dtype=torch.int64),
                )
            )
        return out


class OracleDetector(Detector):
    """No learning: p(healthy) = mean brightness of the valid image (undoing the normalisation),
    and one box at fixed fractions of the valid image: x 25–75 %, y 25–50 %, score 0.9, active."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 2, 1))
        self.cls_head = nn.Linear(2, 3)

    def forward(self, images, targets, image_sizes):
        return {"loss_dummy": self.cls_head(self.backbone(images).mean(dim=(2, 3))).sum() * 0}

    @torch.no_grad()
    def predict(self, images, image_sizes):
        out = []
        for k, (h, w) in enumerate(image_sizes):
            v = images[k, 0, :h, :w].float().mean() * IMAGENET_STD[0] + IMAGENET_MEAN[0]
            v = float(v.clamp(0, 1))
            probs = torch.tensor([v, (1 - v) / 2, (1 - v) / 2])
            box = torch.tensor([[0.25 * w, 0.25 * h, 0.75 * w, 0.5 * h]])
            out.append(Prediction(probs, box, torch.tensor([0.9]), torch.tensor([1])))
        return out


def make_layout(
    root: Path,
    n_tb: int = 8,
    n_healthy: int = 4,
    n_sick: int = 4,
    size: int = 64,
    ann_scale: float = 1.0,
    seed: int = 0,
    name: str = "TBX11K_trainval_only_tb.json",
    all_name: str = "all_trainval.json",
    uncertain_on_first: bool = False,
) -> Path:
    """Write a tiny TBX11K layout: TB images with one bright lesion each (box in the annotation
    frame, which is ``ann_scale`` × the PNG size), plus healthy/sick images.  Returns ``root``."""
    rng = np.random.default_rng(seed)
    records: list[Record] = []
    iid = 0

    def add(folder: str, label: str, k: int, lesion: bool) -> None:
        nonlocal iid
        arr = (rng.normal(100 if label != "sick" else 130, 10, (size, size))).clip(0, 255)
        boxes = []
        if lesion:
            bw, bh = rng.integers(size // 6, size // 3, 2)
            x0, y0 = rng.integers(2, size - bw - 2), rng.integers(2, size - bh - 2)
            arr[y0 : y0 + bh, x0 : x0 + bw] = 220
            cat = 3 if (uncertain_on_first and k == 0) else (1 if k % 3 else 2)
            boxes.append(
                Box(
                    float(x0) * ann_scale,
                    float(y0) * ann_scale,
                    float(bw) * ann_scale,
                    float(bh) * ann_scale,
                    cat,
                )
            )
        fname = f"{folder}/{folder[0]}{k}.png"
        (root / "imgs" / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.astype(np.uint8), mode="L").save(root / "imgs" / fname)
        iid += 1
        records.append(Record(iid, fname, int(size * ann_scale), int(size * ann_scale), label, boxes=boxes))

    for k in range(n_tb):
        add("tb", "tb", k, True)
    for k in range(n_healthy):
        add("health", "healthy", k, False)
    for k in range(n_sick):
        add("sick", "sick", k, False)
    ann = root / "annotations" / "json"
    tb = [r for r in records if r.label == "tb"]
    write_coco(ann / name, [r.replace(image_id=i + 1) for i, r in enumerate(tb)])
    write_coco(ann / all_name, [r.replace(image_id=i + 1) for i, r in enumerate(records)])
    return root


def tiny_builder(cfg) -> Detector:
    return TinyDetector()


def oracle_builder(cfg) -> Detector:
    return OracleDetector()


def ddp_worker(rank: int, world: int, port: int, cfg, out: str, stage: str) -> None:
    """Entry point of one spawned DDP process (gloo on CPU), as torchrun would start it."""
    import os

    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    from tbx.engine.trainer import train

    train(cfg, out, stage=stage, model_builder=tiny_builder, progress=False)


def save_untrained_run(run: Path, overrides: list[str]) -> Path:
    """``run/stage2/final.pt``: an untrained model of the ``tiny`` preset (symformer_retinanet,
    ``overrides`` applied) saved as a run directory; returns ``run``."""
    from tbx.config import to_dict
    from tbx.engine.checkpoint import save_checkpoint
    from tbx.engine.schedule import load_train_config
    from tbx.engine.trainer import build_from_config

    cfg = load_train_config("symformer_retinanet", "tiny", overrides)
    save_checkpoint(
        run / "stage2" / "final.pt",
        model=build_from_config(cfg),
        model_name=cfg.model_name,
        config=to_dict(cfg),
        stage=2,
        epoch=1,
        batch=0,
        iteration=1,
    )
    return run
