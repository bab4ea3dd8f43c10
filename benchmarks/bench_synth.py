"""Throughput of `tbx dataset synth` (images/s, one process) vs a trivial reference in the same run.

Measures, on one core (workers=1):
* layout mode at 512 px and at 256 px (render + PNG + XML, no split/JSON views),
* raw mode (1500–3000 px PNG export: render at 512, upsample, full-resolution noise, PNG),
* the reference: Pillow writing a random 512×512 grayscale PNG (the floor of any PNG writer).

Target (brief): ≥ 20 images/s at 512 px on one core (judged on the CPU-time rate, which is what
one idle core delivers even when the machine is shared).  Run:
    python benchmarks/bench_synth.py [--n 60] [--raw-n 6]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tbx.data.synth import SynthConfig, generate, plan_cases  # noqa: E402


def rate(fn, n: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process).

    On a shared machine the CPU-time rate is what one idle core would deliver."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0), n / (time.process_time() - c0)


def bench_mode(cfg: SynthConfig, n: int, root: Path) -> tuple[float, float]:
    cases = plan_cases(cfg)
    cases = [cases[round(i * len(cases) / n)] for i in range(n)]  # spread over all classes
    generate(cases[0], cfg, root)  # warm-up (imports, caches)
    return rate(lambda i: generate(cases[i % len(cases)], cfg, root), n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="images per layout measurement")
    ap.add_argument("--raw-n", type=int, default=6, help="images for the raw-mode measurement")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (512, 512), dtype=np.uint8)

    def reference(_i: int) -> None:
        buf = io.BytesIO()
        Image.fromarray(noise, mode="L").save(buf, format="PNG")

    def mix(n: int) -> SynthConfig:  # the default class mix, scaled to n images
        k = max(1, n // 124)
        return SynthConfig(
            n_healthy=40 * k, n_sick=40 * k, n_active=24 * k, n_latent=12 * k, n_both=6 * k, n_uncertain=2 * k
        )

    with tempfile.TemporaryDirectory() as tmp:
        ref = rate(reference, args.n)
        results = {"reference: PIL random 512² PNG": ref}
        for size in (512, 256):
            cfg = mix(args.n)
            cfg.size = size
            results[f"layout {size} px"] = bench_mode(cfg, args.n, Path(tmp) / f"l{size}")
        cfg = mix(args.raw_n)
        cfg.raw = True
        results["raw PNG (1500–3000 px)"] = bench_mode(cfg, args.raw_n, Path(tmp) / "raw")
    width = max(map(len, results))
    print(f"{'':<{width}}  {'wall img/s':>10}  {'CPU img/s':>10}  {'ratio vs reference (CPU)':>24}")
    for name, (wall, cpu) in results.items():
        print(f"{name:<{width}}  {wall:10.1f}  {cpu:10.1f}  {cpu / ref[1]:24.2f}")
    cpu512 = results["layout 512 px"][1]
    print(
        f"target ≥ 20 images/s at 512 px on one core (CPU-time rate {cpu512:.1f}): "
        f"{'met' if cpu512 >= 20 else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
