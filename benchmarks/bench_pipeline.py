"""Data pipeline vs training step throughput (target: the DataLoader feeds ≥ 3× the CPU training
step rate of tiny SymFormer, so training never waits for data).

Both are measured in the same run on the same synthetic dataset and preset (default ``tiny``):

- pipeline: images/s of ``DataLoader(TBXDataset(train=True), EpochBatchSampler, workers=W)``
  alone (PNG decode, resize, flip, collate, uint8 batches), after a warm-up batch;
- training: images/s of full training steps (normalise, forward, backward, optimiser step) of the
  preset's model on batches already in memory.

    python benchmarks/bench_pipeline.py [--data SYNTH_ROOT] [--workers 2] [--iters 6]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _results import update_results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--workers", type=int, default=None, help="default: the preset's data.workers")
    ap.add_argument("--iters", type=int, default=6, help="timed training steps")
    ap.add_argument("--loader-batches", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(args.threads)
    from tbx.data.dataset import EpochBatchSampler, TBXDataset, collate, normalize_batch
    from tbx.engine.schedule import build_optimizer, load_train_config
    from tbx.engine.trainer import build_from_config

    root = args.data
    if root is None:
        from tbx.data.synth import SynthConfig, synthesize

        root = Path(tempfile.mkdtemp()) / "synth"
        synthesize(
            root, SynthConfig(n_healthy=40, n_sick=40, n_active=40, n_latent=12, n_both=6, size=256, seed=0)
        )
    cfg = load_train_config(None, args.config, [f"data.root={root}", *args.overrides])
    workers = cfg.data.workers if args.workers is None else args.workers
    sc = cfg.stage1
    ds = TBXDataset(root, cfg.data.stage2_ann, cfg.model.input_size, train=True)  # all images

    sampler = EpochBatchSampler(len(ds), sc.batch_size, seed=0)
    loader = DataLoader(
        ds,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
    )
    n_img, t0, batches = 0, None, []
    epoch = 0
    while len(batches) < args.loader_batches + 1:
        sampler.set_epoch(epoch)
        for b in loader:
            if t0 is None:
                t0 = time.perf_counter()  # after the first (warm-up) batch
            else:
                n_img += len(b)
            batches.append(b)
            if len(batches) >= args.loader_batches + 1:
                break
        epoch += 1
    loader_ips = n_img / (time.perf_counter() - t0)
    del loader

    model = build_from_config(cfg)
    model.set_stage(1)
    model.train()
    if cfg.channels_last:  # as the trainer does
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(model, sc)

    def step(b):
        x = normalize_batch(b.images, b.image_sizes)
        if cfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        losses = model(x, b.targets, b.image_sizes)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    step(batches[0])  # warm-up
    t = time.perf_counter()
    n = 0
    for i in range(args.iters):
        b = batches[1 + i % (len(batches) - 1)]
        step(b)
        n += len(b)
    train_ips = n / (time.perf_counter() - t)
    res = {
        "loader_img_s": loader_ips,
        "train_img_s": train_ips,
        "ratio": loader_ips / train_ips,
        "target_ratio": 3.0,
        "passed": loader_ips / train_ips >= 3.0,
        "workers": workers,
        "threads": args.threads,
        "input_size": cfg.model.input_size,
        "batch_size": sc.batch_size,
        "model": cfg.model_name,
        "backbone": cfg.model.backbone,
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(res, indent=2))
    update_results(
        "bench_pipeline",
        [
            f"Preset `{args.config}` ({cfg.model_name}, {cfg.model.backbone}, {cfg.model.input_size} px, "
            f"batch {sc.batch_size}), {workers} loader workers, {args.threads} threads.",
            "",
            "| loader img/s | training img/s | loader / training | target | passed |",
            "|---|---|---|---|---|",
            f"| {loader_ips:.1f} | {train_ips:.1f} | {loader_ips / train_ips:.2f} | ≥ 3.0 "
            f"| {res['passed']} |",
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
