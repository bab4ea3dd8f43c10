"""Model speed benchmarks (ratios against references measured in the same run).

    .venv/bin/python benchmarks/bench_models.py [--size 512] [--runs 5] [--threads 1,2] [--clock cpu]
        [--json out.json] [--results]     # --results: the ratios into benchmarks/RESULTS.md

1. CPU inference latency, batch 1, ``--size`` px: SymFormer-RetinaNet / our RetinaNet
   (target ≤ 1.08, at 1 and 2 threads: the SAS block at its MAC cost).
2. Our RetinaNet vs torchvision's ``retinanet_resnet50_fpn`` (weights=None, weights_backbone=None,
   min_size = max_size = size, same thresholds: score 0.05, NMS 0.5, top-1000 per level, 100 dets),
   target ≤ 1.0 (≤ 0.9 against torchvision run channels_last).  Ours runs as ``tbx predict``
   runs it (:func:`tbx.models.inference.prepare_for_inference`: BatchNorm folded into the
   convolutions, ReLUs and shortcut sums fused into oneDNN convolutions, channels_last);
   torchvision's as shipped, and also with channels_last.  ``prepare_for_inference`` also makes
   glibc keep freed memory for reuse (:func:`tbx.models.inference.reuse_freed_memory`); that is
   process-wide, so torchvision's models run under the same allocator.  Ours
   carries the docs/models.md §2.6 classification head (≈ 3 GMACs at 512) and builds P6 from C5 (2048 ch,
   docs/models.md §2.1) where torchvision builds it from P5, so the detection path alone (no classification
   head) is printed too.  Where SymFormer's extra time goes: the SAS block alone, its positional
   encoding (SPE with the STN), and its five projection matrix products (query, value, output,
   FFN ×2) on inputs of the same shapes — their MACs are nearly all of the SAS block's.
3. The deformable sampling core ``ms_deform_sample`` (forward + backward) vs a naive reference
   that loops in Python over heads × levels × points with explicit bilinear gathers, at the
   Deformable-DETR encoder scale (4 levels of a 512 input, 8 heads × 32 ch, 4 points), target ≥ 8×
   at 1 thread.

Each timing is the median of ``--runs`` rounds (every compared function once per round, the
order reversed every other round) after warm-up runs, and each ratio the median of the
per-round ratios (:func:`paired_ratio`), under ``torch.inference_mode`` for inference;
``--clock cpu`` times process CPU time instead of wall time (use it with ``--threads 1`` on a
shared machine).  Weights
are random (speed does not depend on them, except through the number of boxes reaching NMS, which
we equalise by using the same prior-0.01 initialisation for both heads).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

from tbx.models.config import ModelConfig
from tbx.models.deform_core import ms_deform_sample
from tbx.models.inference import FusedConv2d, prepare_for_inference
from tbx.models.info import count_macs
from tbx.models.registry import build

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def round_times(fns: dict, runs: int, warmup: int = 2, clock: str = "wall") -> dict[str, list[float]]:
    """Seconds of each function in each of ``runs`` rounds; a round runs every function once,
    in turn, the order reversed every other round, so that load drifts on a shared machine hit
    every function alike.  ``clock="cpu"`` measures process CPU time (equal to wall time for a
    single-threaded run on an idle machine, robust to other processes)."""
    tick = CLOCKS[clock]
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(runs):
        for k in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            t0 = tick()
            fns[k]()
            times[k].append(tick() - t0)
    return times


def median_times(fns: dict, runs: int, warmup: int = 2, clock: str = "wall") -> dict[str, float]:
    """Median seconds per function over :func:`round_times`' rounds."""
    return {k: statistics.median(v) for k, v in round_times(fns, runs, warmup, clock).items()}


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of ``a``'s time / ``b``'s time in the same round: the two ran seconds
    apart, so a slow spell of the machine (these are shared VMs: ±5 % between minutes) scales
    both and cancels, where a ratio of two medians keeps it."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def bench_detectors(size: int, runs: int, clock: str = "wall") -> dict:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet50", pretrained="none")
    sym = prepare_for_inference(build("symformer_retinanet", cfg))
    ret = prepare_for_inference(build("retinanet", cfg))

    def tv_retinanet():
        return torchvision.models.detection.retinanet_resnet50_fpn(
            weights=None,
            weights_backbone=None,
            num_classes=2,
            min_size=size,
            max_size=size,
            score_thresh=0.05,
            nms_thresh=0.5,
            detections_per_img=100,
            topk_candidates=1000,
        ).eval()

    tv = tv_retinanet()
    tv_cl = tv_retinanet().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, size, size)
    x_cl = x.contiguous(memory_format=torch.channels_last)  # as tbx predict feeds it
    sizes = [(size, size)]

    def ours_detection_only(model):
        def run():
            _, feats = model._features(x_cl, sizes)
            cls_out, reg_out = model.head(feats)
            anchors = model.anchor_generator([f.shape[-2:] for f in feats], x.device)
            model.postprocess([c[0] for c in cls_out], [r[0] for r in reg_out], anchors, sizes[0])

        return run

    with torch.inference_mode():
        sas_fns = sas_parts(sym, x_cl)
        conv, conv_in, conv_macs = single_conv(size)
        rounds = round_times(
            {
                "sym": lambda: sym.predict(x_cl, sizes),
                "ret": lambda: ret.predict(x_cl, sizes),
                "ret_det": ours_detection_only(ret),
                "tv": lambda: tv([x[0]]),
                "tv_cl": lambda: tv_cl([x_cl[0]]),
                **sas_fns,
                "conv": lambda: conv(conv_in),
            },
            runs,
            clock=clock,
        )
    t = {k: statistics.median(v) for k, v in rounds.items()}
    t_sym, t_ret, t_ret_det, t_tv, t_tv_cl = t["sym"], t["ret"], t["ret_det"], t["tv"], t["tv_cl"]
    # MACs for context (mmcv-style hooks; torchvision's FrozenBatchNorm2d is not counted)
    ret_macs, _ = count_macs(ret, x)
    sym_macs, _ = count_macs(sym, x)
    tv_macs, _ = count_macs(tv, x)
    gmacs = {
        "retinanet": sum(ret_macs.values()) / 1e9,
        "symformer_retinanet": sum(sym_macs.values()) / 1e9,
        "retinanet_detection_only": (sum(ret_macs.values()) - ret_macs["cls_head"]) / 1e9,
        "torchvision_retinanet": sum(tv_macs.values()) / 1e9,
    }
    sas_macs = sum(m for k, m in sym_macs.items() if k in ("sym_attention", "spe")) / 1e9
    return {
        "sas_ms": {k: t[k] * 1e3 for k in sas_fns},
        # the ceiling for direct float32 convolution here: one 256-ch 3×3 convolution on P3, alone
        "single_conv_gmacs_per_s": conv_macs / t["conv"] / 1e9,
        "sas_gmacs": sas_macs,
        "latency_ms": {
            "symformer_retinanet": t_sym * 1e3,
            "retinanet": t_ret * 1e3,
            "retinanet_detection_only": t_ret_det * 1e3,
            "torchvision_retinanet": t_tv * 1e3,
            "torchvision_retinanet_channels_last": t_tv_cl * 1e3,
        },
        "gmacs": gmacs,
        # each ratio: the median of the per-round ratios (paired_ratio)
        "symformer_over_retinanet": paired_ratio(rounds, "sym", "ret"),
        "retinanet_over_torchvision": paired_ratio(rounds, "ret", "tv"),
        "retinanet_over_torchvision_channels_last": paired_ratio(rounds, "ret", "tv_cl"),
        "retinanet_detection_only_over_torchvision": paired_ratio(rounds, "ret_det", "tv"),
        "ratio_of_medians": {
            "symformer_over_retinanet": t_sym / t_ret,
            "retinanet_over_torchvision_channels_last": t_ret / t_tv_cl,
        },
    }


def single_conv(size: int) -> tuple:
    """One 256 → 256 3×3 convolution + ReLU on the P3 map (``size / 8``), run as the prepared
    models run theirs (:class:`tbx.models.inference.FusedConv2d`, NHWC): ``(conv, input, MACs)``.
    Its GMAC/s is the rate the detectors' convolutions can reach at best."""
    side = size // 8
    conv = FusedConv2d.from_conv(torch.nn.Conv2d(256, 256, 3, padding=1), relu=True)
    conv = conv.eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 256, side, side).contiguous(memory_format=torch.channels_last)
    return conv, x, 256 * 256 * 9 * side * side


def sas_parts(sym, x_cl) -> dict:
    """Timed pieces of SymFormer's SAS block on the FPN maps of ``x_cl`` (inference mode)."""
    feats = sym.fpn(sym.backbone(x_cl)[1:])
    enc = sym.sas.encoder
    att = enc.self_attn
    tokens = sum(f.shape[-2] * f.shape[-1] for f in feats)
    t256 = torch.randn(1, tokens, enc.norm1.normalized_shape[0])
    t1024 = torch.randn(1, tokens, enc.linear1.out_features)
    query = att.query_proj if att.query_proj is not None else att.sampling_offsets

    def linears():
        query(t256), att.value_proj(t256), att.output_proj(t256), enc.linear1(t256), enc.linear2(t1024)

    return {
        "sas": lambda: sym.sas(feats),
        "sas_spe": lambda: sym.sas.spe.nhwc(feats),
        "sas_linears": linears,
    }


def naive_ms_deform_sample(value, shapes, loc, weights):
    """Reference: Python loop over heads × levels × points, bilinear by explicit gathers
    (pixel centres at (j + 0.5)/W, zeros outside)."""
    n, s, m, d = value.shape
    _, q, _, n_levels, n_points, _ = loc.shape
    out = value.new_zeros(n, q, m, d)
    start = 0
    for lvl, (h, w) in enumerate(shapes):
        v_l = value[:, start : start + h * w]  # (N, HW, M, D)
        start += h * w
        for hd in range(m):
            v = v_l[:, :, hd]  # (N, HW, D)
            for p in range(n_points):
                x = loc[:, :, hd, lvl, p, 0] * w - 0.5
                y = loc[:, :, hd, lvl, p, 1] * h - 0.5
                x0, y0 = x.floor(), y.floor()
                acc = value.new_zeros(n, q, d)
                for dx in (0, 1):
                    for dy in (0, 1):
                        xi, yi = x0 + dx, y0 + dy
                        wgt = (1 - (x - xi).abs()) * (1 - (y - yi).abs())
                        inside = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
                        idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
                        g = torch.gather(v, 1, idx[..., None].expand(n, q, d))
                        acc = acc + g * (wgt * inside)[..., None]
                out[:, :, hd] = out[:, :, hd] + acc * weights[:, :, hd, lvl, p][..., None]
    return out.reshape(n, q, m * d)


def deform_case(size: int, heads: int = 8, device: str | torch.device = "cpu"):
    """The Deformable-DETR encoder-scale case (4 levels of a ``size`` input, ``heads`` × 32 ch,
    4 points) → ``({"core": run, "naive": run}, max |core − naive|, queries)``; each ``run`` is one
    forward + backward."""
    torch.manual_seed(0)
    shapes = [(size // s, size // s) for s in (8, 16, 32, 64)]
    s = sum(h * w for h, w in shapes)
    n, m, d, lv, p = 1, heads, 32, len(shapes), 4
    value = torch.randn(n, s, m, d, device=device, requires_grad=True)
    loc = torch.rand(n, s, m, lv, p, 2, device=device, requires_grad=True)
    wts = torch.rand(n, s, m, lv, p, device=device).softmax(-1).requires_grad_(True)
    grad_out = torch.randn(n, s, m * d, device=device)

    def fwd_bwd(fn):
        def run():
            for t in (value, loc, wts):
                t.grad = None
            fn(value, shapes, loc, wts).backward(grad_out)

        return run

    with torch.no_grad():
        err = (
            (ms_deform_sample(value, shapes, loc, wts) - naive_ms_deform_sample(value, shapes, loc, wts))
            .abs()
            .max()
        )
    return {"core": fwd_bwd(ms_deform_sample), "naive": fwd_bwd(naive_ms_deform_sample)}, float(err), s


def bench_deform_core(size: int, runs: int, clock: str = "wall") -> dict:
    fns, err, queries = deform_case(size)
    t = median_times(fns, runs, warmup=1, clock=clock)
    t_core, t_naive = t["core"], t["naive"]
    return {
        "deform_core_ms": t_core * 1e3,
        "naive_loop_ms": t_naive * 1e3,
        "speedup": t_naive / t_core,
        "max_abs_diff": err,
        "queries": queries,
    }


def run_once(size: int, runs: int, clock: str) -> dict:
    """Every benchmark of this file at the current torch thread count (printed as it goes)."""
    res = {
        "size": size,
        "runs": runs,
        "threads": torch.get_num_threads(),
        "clock": clock,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    res["detectors"] = det = bench_detectors(size, runs, clock)
    for k, v in det["latency_ms"].items():
        print(f"latency {k:28s} {v:9.1f} ms")
    for k, v in det["gmacs"].items():
        print(f"GMACs   {k:28s} {v:9.2f}")
    print(f"symformer_retinanet / retinanet        = {det['symformer_over_retinanet']:.3f}  (target ≤ 1.08)")
    print(
        f"retinanet / torchvision retinanet      = {det['retinanet_over_torchvision']:.3f}  "
        "(target ≤ 1.0; ours incl. classification head)"
    )
    print(
        f"retinanet / torchvision channels_last  = {det['retinanet_over_torchvision_channels_last']:.3f}"
        "  (target ≤ 0.9)"
    )
    print(f"retinanet detection path / torchvision = {det['retinanet_detection_only_over_torchvision']:.3f}")
    sas = det["sas_ms"]
    print(
        f"SAS block {sas['sas']:.1f} ms ({det['sas_gmacs']:.2f} GMACs): "
        f"projections {sas['sas_linears']:.1f} ms, "
        f"SPE {sas['sas_spe']:.1f} ms, sampling + norms + rest "
        f"{sas['sas'] - sas['sas_linears'] - sas['sas_spe']:.1f} ms; symformer − retinanet "
        f"{det['latency_ms']['symformer_retinanet'] - det['latency_ms']['retinanet']:.1f} ms"
    )
    print(_limits_line(det))
    res["deform_core"] = dc = bench_deform_core(size, runs, clock)
    print(
        f"ms_deform_sample fwd+bwd {dc['deform_core_ms']:.1f} ms vs naive loop {dc['naive_loop_ms']:.1f} "
        f"ms → speedup {dc['speedup']:.1f}×  (target ≥ 8 at 1 thread; "
        f"max |diff| {dc['max_abs_diff']:.2e})"
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument(
        "--threads",
        default="0",
        help="torch threads, or a comma list run in turn, e.g. 1,2 (0: torch's default)",
    )
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall time, or process CPU time (robust on a shared machine; use with --threads 1)",
    )
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--results", action="store_true", help="write the ratios into benchmarks/RESULTS.md")
    args = ap.parse_args()
    all_res = []
    for n in [int(t) for t in str(args.threads).split(",")]:
        if n:
            torch.set_num_threads(n)
        print(f"--- {torch.get_num_threads()} thread(s), {args.clock} clock")
        all_res.append(run_once(args.size, args.runs, args.clock))
    if args.json:
        from tbx.io import atomic_write_json

        atomic_write_json(args.json, all_res[0] if len(all_res) == 1 else all_res)
    if args.results:
        _write_results(all_res)


def _limits_line(det: dict) -> str:
    """What the two latency targets ask of the hardware, from this run's figures: the MAC rate
    our RetinaNet would need for 0.9× torchvision-channels_last against the single-convolution
    ceiling, and the SAS block's budget for 1.08 against its projections' time alone."""
    lat, gm, sas = det["latency_ms"], det["gmacs"], det["sas_ms"]
    rate = gm["retinanet"] / lat["retinanet"]  # GMAC per ms = TMAC/s
    need = gm["retinanet"] / (0.9 * lat["torchvision_retinanet_channels_last"])
    return (
        f"RetinaNet runs at {rate * 1e3:.1f} GMAC/s; 0.9× torchvision channels_last needs "
        f"{need * 1e3:.1f}, one 256-ch 3×3 convolution alone reaches {det['single_conv_gmacs_per_s']:.1f}. "
        f"SymFormer ≤ 1.08× leaves the SAS block {0.08 * lat['retinanet']:.0f} ms; its projections "
        f"alone take {sas['sas_linears']:.0f} ms, the rest of it {sas['sas'] - sas['sas_linears']:.0f} ms."
    )


def _write_results(all_res: list[dict]) -> None:
    """The ratios of each thread count as the ``## bench_models`` section of RESULTS.md."""
    from _results import update_results

    r0 = all_res[0]
    lines = [
        f"{r0['size']} px, batch 1, {r0['clock']} clock, {r0['runs']} interleaved rounds, ratios the median "
        f"of the per-round ratios; "
        f"torch {r0['torch']}, torchvision {r0['torchvision']}.",
        "",
        "| ratio | " + " | ".join(f"{r['threads']} thread(s)" for r in all_res) + " | target |",
        "|---|" + "---|" * len(all_res) + "---|",
    ]

    def row(name, fmt, target):
        lines.append(f"| {name} | " + " | ".join(fmt(r) for r in all_res) + f" | {target} |")

    row(
        "SymFormer-RetinaNet / RetinaNet latency",
        lambda r: f"{r['detectors']['symformer_over_retinanet']:.3f}",
        "≤ 1.08",
    )
    row(
        "(their MAC ratio)",
        lambda r: (
            f"{r['detectors']['gmacs']['symformer_retinanet']:.2f} / "
            f"{r['detectors']['gmacs']['retinanet']:.2f}"
        ),
        "",
    )
    row(
        "RetinaNet / torchvision RetinaNet",
        lambda r: f"{r['detectors']['retinanet_over_torchvision']:.3f}",
        "≤ 1.0",
    )
    row(
        "RetinaNet / torchvision RetinaNet, channels_last",
        lambda r: f"{r['detectors']['retinanet_over_torchvision_channels_last']:.3f}",
        "≤ 0.9",
    )
    row(
        "deformable core vs naive loop, fwd + bwd",
        lambda r: f"{r['deform_core']['speedup']:.1f}×",
        "≥ 8× (1 thread)",
    )
    row("deformable core max abs diff", lambda r: f"{r['deform_core']['max_abs_diff']:.1e}", "≤ 1e-5")
    lines.append("")
    for r in all_res:
        lat = r["detectors"]["latency_ms"]
        dc = r["deform_core"]
        sas = r["detectors"]["sas_ms"]
        lines.append(
            f"{r['threads']} thread(s), latency (ms): "
            + ", ".join(f"{k} {v:.0f}" for k, v in lat.items())
            + f"; SAS block {sas['sas']:.0f} ({r['detectors']['sas_gmacs']:.2f} GMACs: projections "
            f"{sas['sas_linears']:.0f}, SPE {sas['sas_spe']:.0f}, sampling + norms + rest "
            f"{sas['sas'] - sas['sas_linears'] - sas['sas_spe']:.0f})"
            + f"; deformable core {dc['deform_core_ms']:.0f} ms vs naive "
            f"{dc['naive_loop_ms']:.0f} ms ({dc['queries']} queries). " + _limits_line(r["detectors"])
        )
    update_results("bench_models", lines)


if __name__ == "__main__":
    main()
