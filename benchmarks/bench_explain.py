"""``tbx explain`` cost: explain time per image as a ratio to one ``predict`` of the same image.

    .venv/bin/python benchmarks/bench_explain.py [--size 512] [--runs 3] [--threads 1] [--clock cpu]

SymFormer-RetinaNet R50 (random weights, prepared as ``tbx predict`` prepares it: BatchNorm folded,
channels_last), one 512 × 512 chest X-ray (``../shared/data/cxr-samples`` when present, else noise)
on the CPU.  The reference, *predict*, is what ``tbx predict`` does per image: pre-processing
(resize, pad, normalise) + ``model.predict`` under ``no_grad``.  Each method is
:func:`tbx.explain.explain_images` on the same image: the same pre-processing and forward pass,
plus the CAM (a backward pass through the classification head only) or the pyramid pooling, and
the map resized to the source frame.  Medians of ``--runs`` interleaved runs, after a warm-up, in
one process; figures go to ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from _results import update_results
from bench_models import median_times

from tbx.data.dataset import normalize_batch
from tbx.data.imageio import read_gray8, resize_gray8
from tbx.explain import explain_images
from tbx.explain.maps import batch_from_images
from tbx.models.config import ModelConfig
from tbx.models.inference import prepare_for_inference
from tbx.models.registry import build

METHODS = ("gradcam", "gradcam++", "layercam", "eigencam", "features")
SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-samples"


def test_image(size: int) -> tuple[np.ndarray, str]:
    files = sorted(SAMPLES.glob("*.png")) if SAMPLES.is_dir() else []
    if files:
        return resize_gray8(read_gray8(files[0]), size), files[0].name
    return np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8), "noise"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = prepare_for_inference(
        build(
            "symformer_retinanet", ModelConfig(backbone="resnet50", pretrained="none", input_size=args.size)
        )
    )
    img, name = test_image(args.size)

    def predict() -> None:
        batch = batch_from_images([img], args.size)
        x = normalize_batch(batch.images, batch.image_sizes).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            model.predict(x, batch.image_sizes)

    fns = {"predict": predict}
    for m in METHODS:
        fns[m] = lambda m=m: explain_images(model, [img], m, "tb", input_size=args.size)
    t = median_times(fns, args.runs, warmup=1, clock=args.clock)
    lines = [
        f"SymFormer-RetinaNet R50 (random weights, BN folded, channels_last), one {args.size}² CXR "
        f"({name}), CPU, {args.threads} thread(s), {args.clock} clock, median of {args.runs} "
        "interleaved runs.",
        "",
        "| method | s / image | ratio to one predict |",
        "|---|---|---|",
        f"| predict (reference) | {t['predict']:.2f} | 1.00 |",
    ]
    lines += [f"| {m} | {t[m]:.2f} | {t[m] / t['predict']:.2f} |" for m in METHODS]
    print("\n".join(lines))
    update_results("bench_explain", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
