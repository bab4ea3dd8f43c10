"""Screening throughput on CPU: onnxruntime vs eager torch for SymFormer-R50 at 512 px, and the
decoding pipeline vs inference.

    PYTHONPATH=. python benchmarks/bench_screen.py [--threads 2] [--rounds 3] [--batch 2]

One process, random-init weights (speed does not depend on them), the same pre-processed batch for
both backends (``tbx.deploy.backends.Backend.run``: normalisation, network, decoding + NMS), timed in
interleaved rounds (torch, onnxruntime, torch, …) so machine load hits both alike; the median round
is reported.  Decoding: :class:`tbx.deploy.inputs.ScreenInputs` over the real CXRs in
``../shared/data/cxr-samples`` (PNG + JPEG, decode + resize + pad), in the main process.
Figures go to ``benchmarks/RESULTS.md`` (section ``bench_screen``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import update_results  # noqa: E402

from tbx.config import to_dict  # noqa: E402
from tbx.deploy.backends import load_backend  # noqa: E402
from tbx.deploy.export import export_onnx  # noqa: E402
from tbx.deploy.inputs import ScreenInputs  # noqa: E402
from tbx.engine.checkpoint import save_checkpoint  # noqa: E402
from tbx.engine.schedule import load_train_config  # noqa: E402
from tbx.engine.trainer import build_from_config as build_model  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-samples"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    files = sorted(str(p) for p in SAMPLES.glob("*") if p.suffix in (".png", ".jpg"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_train_config(
            "symformer_retinanet",
            "symformer_retinanet_r50",
            ["model.pretrained=none", f"model.input_size={args.size}"],
        )
        model = build_model(cfg)
        ckpt = save_checkpoint(
            Path(tmp) / "run" / "stage2" / "final.pt",
            model=model,
            model_name=cfg.model_name,
            config=to_dict(cfg),
            stage=2,
            epoch=1,
            batch=0,
            iteration=1,
        )
        del model
        t0 = time.perf_counter()
        onnx_path = export_onnx(ckpt, Path(tmp) / "sym.onnx")
        export_s = time.perf_counter() - t0
        tb = load_backend(ckpt, device="cpu", amp="off")
        ob = load_backend(onnx_path, threads=args.threads)
        ds = ScreenInputs(list(enumerate(files)), args.size)
        t0 = time.perf_counter()
        decoded = [ds[k] for k in range(len(ds))]
        decode_ips = len(decoded) / (time.perf_counter() - t0)
        images = torch.stack([d.image for d in decoded[: args.batch]])
        sizes = [d.size for d in decoded[: args.batch]]
        for b in (tb, ob):  # warm-up
            b.run(images, sizes)
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        n_batches = 3
        for _ in range(args.rounds):
            for name, b in (("torch", tb), ("onnxruntime", ob)):
                t0 = time.perf_counter()
                for _ in range(n_batches):
                    b.run(images, sizes)
                times[name].append(n_batches * args.batch / (time.perf_counter() - t0))
    load = os.getloadavg()[0]
    ips = {k: statistics.median(v) for k, v in times.items()}
    ratio = ips["onnxruntime"] / ips["torch"]
    lines = [
        f"SymFormer-RetinaNet R50 (random init), {args.size} px, CPU {args.threads} threads, batch "
        f"{args.batch}; median of {args.rounds} interleaved rounds of {n_batches} batches (one process). "
        f"Export took {export_s:.0f} s. Load average {load:.1f} on {os.cpu_count()} cores during the run "
        "(a shared machine: absolute rates are low, the ratios are what the interleaving protects).",
        "",
        "| pipeline stage | images / s |",
        "|---|---|",
        f"| inference, eager torch (BN folded, channels-last) | {ips['torch']:.2f} |",
        f"| inference, onnxruntime (same pre/post-processing) | {ips['onnxruntime']:.2f} |",
        f"| decoding (PNG/JPEG → resized, padded input), 1 process | {decode_ips:.1f} |",
        "",
        f"onnxruntime / torch: **{ratio:.2f}×** (target ≥ 1.3×); decoding / fastest inference: "
        f"{decode_ips / max(ips.values()):.0f}× (one decoding process outruns inference, so the "
        "DataLoader workers are not the bottleneck).",
    ]
    print("\n".join(lines))
    update_results("bench_screen", lines)


if __name__ == "__main__":
    main()
