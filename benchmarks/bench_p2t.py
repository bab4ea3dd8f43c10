"""P2T-Small vs ResNet-50 SymFormer-RetinaNet: inference latency at 512, measured in one run.

    python benchmarks/bench_p2t.py [--size 512] [--runs 5] [--threads 1] [--clock cpu] [--device cpu|cuda]

Both models (random weights, ``pretrained: none``) are prepared as ``tbx predict`` prepares them
(:func:`tbx.models.inference.prepare_for_inference`: BatchNorm folded, channels_last) and timed on
``predict`` (batch 1, ``torch.inference_mode``), interleaved round-robin after warm-up runs; the
figure is the ratio P2T / R50 with both medians.  For context the paper reports 17.9 FPS (P2T) and
24.3 FPS (R50) on one TITAN XP, a ratio of 1.36.  With ``--device cuda`` each timed call ends with
``torch.cuda.synchronize()`` (the pooling attention then runs through the fused SDPA kernels).
Results go to ``benchmarks/RESULTS.md`` (section ``bench_p2t``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from _results import update_results
from bench_models import CLOCKS, median_times

from tbx.models.config import ModelConfig
from tbx.models.inference import prepare_for_inference
from tbx.models.info import count_macs_detail
from tbx.models.registry import build

PAPER_FPS = {"p2t_small": 17.9, "resnet50": 24.3}  # one TITAN XP (TPAMI 2023)


def bench(size: int, runs: int, clock: str, device: str) -> dict:
    torch.manual_seed(0)
    dev = torch.device(device)
    x = torch.randn(1, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
    sizes = [(size, size)]
    fns: dict[str, Callable[[], object]] = {}
    gmacs: dict[str, float] = {}
    for bb in ("p2t_small", "resnet50"):
        model = build("symformer_retinanet", ModelConfig(backbone=bb, pretrained="none", input_size=size))
        count = count_macs_detail(model.eval(), x.contiguous())
        gmacs[bb] = count.total / 1e9
        model = prepare_for_inference(model.to(dev))

        def run(m: torch.nn.Module = model) -> object:
            out = m.predict(x, sizes)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            return out

        fns[bb] = run
    with torch.inference_mode():
        t = median_times(fns, runs, clock=clock)
    return {
        "latency_ms": {k: v * 1e3 for k, v in t.items()},
        "gmacs_mmcv": gmacs,
        "p2t_over_r50": t["p2t_small"] / t["resnet50"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or process CPU time (robust on a shared machine; use with --threads 1)",
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--no-results", action="store_true", help="do not write benchmarks/RESULTS.md")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = bench(args.size, args.runs, args.clock, args.device)
    lat, ratio = res["latency_ms"], res["p2t_over_r50"]
    for k, v in lat.items():
        print(f"{k:10s} {v:9.1f} ms  ({1000 / v:5.1f} FPS, {res['gmacs_mmcv'][k]:.2f} GMACs mmcv-style)")
    paper = PAPER_FPS["resnet50"] / PAPER_FPS["p2t_small"]
    print(f"P2T / R50 latency = {ratio:.3f}  (paper, TITAN XP FPS ratio: {paper:.2f})")
    if args.no_results:
        return
    where = (
        f"{args.device}, {torch.get_num_threads()} threads, {args.clock} clock, median of {args.runs} "
        f"interleaved runs, batch 1, {args.size}×{args.size}, torch {torch.__version__}"
    )
    lines = [
        f"SymFormer w/ RetinaNet `predict` latency, P2T-Small vs ResNet-50 ({where}; "
        "prepared as `tbx predict` does: BN folded, channels_last).",
        "",
        "| backbone | latency (ms) | FPS | GMACs (mmcv-style) | paper FPS (TITAN XP) |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v:.1f} | {1000 / v:.2f} | {res['gmacs_mmcv'][k]:.2f} | {PAPER_FPS[k]} |"
        for k, v in lat.items()
    ]
    lines += ["", f"**P2T / R50 latency: {ratio:.3f}** (paper: {paper:.2f} from its FPS)."]
    print(f"wrote {update_results('bench_p2t', lines)}")


if __name__ == "__main__":
    main()
