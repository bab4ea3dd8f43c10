"""One-shot GPU readiness check (issue 22): every CUDA path of tbx, measured once, in ≤ 8 minutes.

    python benchmarks/gpu_check.py [--out gpu_check.json]      # on a CUDA machine (see gpu_check.sh)
    python benchmarks/gpu_check.py --dry-run                   # same code path, CPU, 128 px, 2 iterations

Sections (each one recorded even when it fails, so that one broken path does not hide the rest):

1. ``env`` — GPU(s), driver, torch / CUDA / cuDNN versions, bf16 support.
2. ``train`` — SymFormer-RetinaNet-R50 at 512 px, batch 8, bf16 autocast, channels_last,
   ``cudnn.benchmark``: 50 SGD iterations on synthetic images with boxes; img/s (after the
   warm-up iterations), peak memory, every loss finite.
3. ``bf16_vs_fp32`` — 10 iterations from the same weights on the same batches, once under bf16
   autocast and once in strict fp32 (TF32 off): the largest relative difference of the losses.
4. ``inference`` — FPS at batch 1 and 8 (bf16, BatchNorm folded, channels_last,
   ``cudnn.benchmark``), without and with ``torch.compile`` (the dry run compiles with the
   ``eager`` backend: graph capture without a C++ toolchain).
5. ``torchvision`` — ``retinanet_resnet50_fpn`` (same size, thresholds, bf16, channels_last) in
   the same run: inference FPS at batch 1 and 8 and training img/s — the reference.
6. ``deform_core`` — ``ms_deform_sample`` forward + backward on the device vs the naive loop of
   ``bench_models.py`` (speed-up, max |Δ|).
7. ``ddp`` — with ≥ 2 visible GPUs: a 2-process DDP (NCCL) training step; the ranks must end with
   identical weights and finite losses (skipped otherwise; ``--ddp-cpu`` runs it with gloo on CPU).

Writes one JSON (``--out``) and prints a table against the goals: inference ≥ 500 FPS at batch 8,
training ≥ 400 img/s, bf16/fp32 loss difference ≤ 5e-2, finite losses.  Weights are random (no
download): speed does not depend on them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

from bench_models import deform_case  # noqa: E402

from tbx.models.config import ModelConfig  # noqa: E402
from tbx.models.inference import prepare_for_inference  # noqa: E402
from tbx.models.registry import build  # noqa: E402

GOALS = {"inference_fps_b8": 500.0, "train_img_s": 400.0, "bf16_fp32_rel_diff": 5e-2}
PAPER_FPS_B1 = 24.3  # SymFormer-RetinaNet, TITAN XP, batch 1 (the paper)


@dataclass
class Plan:
    """What one run measures; the dry run shrinks sizes and counts, never the code path."""

    device: str
    size: int = 512
    batch: int = 8
    train_iters: int = 50
    warmup_iters: int = 5
    compare_iters: int = 10
    infer_iters: int = 30
    infer_warmup: int = 5
    tv_train_iters: int = 20
    deform_runs: int = 5
    compile_backend: str = "inductor"
    bf16: bool = True  # the CPU dry run keeps autocast's code path but disabled: CPU bf16 convs crawl
    deform_heads: int = 8
    threads: int = 0  # torch CPU threads (0: torch's default); the dry run uses 1 (no oversubscription)
    budget_s: float = 450.0  # optional sections are skipped past this (the lease is 8 min)

    @staticmethod
    def dry_run() -> Plan:
        return Plan(
            device="cpu",
            size=128,
            batch=2,
            train_iters=2,
            warmup_iters=1,
            compare_iters=2,
            infer_iters=2,
            infer_warmup=0,
            tv_train_iters=2,
            deform_runs=1,
            compile_backend="eager",
            bf16=False,
            deform_heads=2,
            threads=1,
        )


# ------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp(device: torch.device, enabled: bool):
    """bf16 autocast (CPU autocast in the dry run: the same code path)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@contextlib.contextmanager
def strict_fp32(device: torch.device):
    """No TF32 for the fp32 reference (matmuls and convolutions)."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None


def synthetic_batches(n: int, batch: int, size: int, device: torch.device, seed: int = 0) -> list:
    """``n`` (images, targets) pairs: normalised noise images, 1–3 boxes each (both TB classes)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        images = torch.randn(batch, 3, size, size, generator=g)
        targets = []
        for i in range(batch):
            k = int(torch.randint(1, 4, (1,), generator=g))
            xy = torch.rand(k, 2, generator=g) * size * 0.6
            wh = (torch.rand(k, 2, generator=g) * 0.3 + 0.05) * size
            boxes = torch.cat([xy, (xy + wh).clamp(max=size)], 1)
            targets.append(
                {
                    "boxes": boxes.to(device),
                    "labels": torch.randint(1, 3, (k,), generator=g).to(device),
                    "cls_label": torch.tensor(2 if i % 2 else 0, device=device),
                }
            )
        out.append((images.to(device).contiguous(memory_format=torch.channels_last), targets))
    return out


def build_symformer(plan: Plan, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build(
        "symformer_retinanet", ModelConfig(backbone="resnet50", pretrained="none", input_size=plan.size)
    )
    return model.to(device).to(memory_format=torch.channels_last)


def train_steps(
    model: torch.nn.Module, batches: list, device: torch.device, bf16: bool, lr: float = 0.01
) -> tuple[list[float], list[float], bool]:
    """SGD steps (the paper's optimiser) → (per-iteration total loss, per-iteration seconds, finite)."""
    model.train()
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=1e-4
    )
    losses, times, finite = [], [], True
    for images, targets in batches:
        sync(device)
        t0 = time.perf_counter()
        with amp(device, bf16):
            parts = model(images, targets, [tuple(images.shape[-2:])] * images.shape[0])
        loss = sum(parts.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        times.append(time.perf_counter() - t0)
        vals = [float(loss.detach())] + [float(v.detach()) for v in parts.values()]
        finite &= all(math.isfinite(v) for v in vals)
        losses.append(vals[0])
    return losses, times, finite


def fps(fn: Callable[[], Any], batch: int, iters: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return batch * iters / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------ sections
def section_env(device: torch.device) -> dict:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "device": str(device),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
    if device.type == "cuda":
        env["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
        env["memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
        try:
            q = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            env["driver"] = (
                q.stdout.strip().splitlines()[0].split(",")[0].strip() if q.stdout.strip() else None
            )
        except (OSError, subprocess.SubprocessError):
            env["driver"] = None
    else:
        env["cpu_threads"] = torch.get_num_threads()
    return env


def section_train(plan: Plan, device: torch.device) -> dict:
    model = build_symformer(plan, device)
    batches = synthetic_batches(plan.train_iters, plan.batch, plan.size, device, seed=1)
    reset_peak(device)
    losses, times, finite = train_steps(model, batches, device, bf16=plan.bf16)
    timed = times[plan.warmup_iters :] or times
    return {
        "model": "symformer_retinanet (ResNet-50, random weights)",
        "size": plan.size,
        "batch": plan.batch,
        "iterations": len(times),
        "amp": "bf16" if plan.bf16 else "off (CPU dry run)",
        "channels_last": True,
        "img_s": plan.batch * len(timed) / sum(timed),
        "median_iter_ms": 1e3 * statistics.median(timed),
        "peak_memory_mb": peak_mb(device),
        "all_losses_finite": finite,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def section_bf16_vs_fp32(plan: Plan, device: torch.device) -> dict:
    base = build_symformer(plan, device)
    state = copy.deepcopy(base.state_dict())
    batches = synthetic_batches(plan.compare_iters, plan.batch, plan.size, device, seed=2)
    lb, _, fin_b = train_steps(base, batches, device, bf16=plan.bf16)
    ref = build_symformer(plan, device)
    ref.load_state_dict(state)
    with strict_fp32(device):
        lf, _, fin_f = train_steps(ref, batches, device, bf16=False)
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(lb, lf, strict=True)]
    return {
        "iterations": len(lb),
        "loss_bf16": lb,
        "loss_fp32": lf,
        "max_rel_diff": max(rel),
        "all_losses_finite": fin_b and fin_f,
    }


def _inference_model(plan: Plan, device: torch.device) -> torch.nn.Module:
    return prepare_for_inference(build_symformer(plan, device).eval())


def section_inference(plan: Plan, device: torch.device, t_start: float) -> dict:
    out: dict[str, Any] = {
        "amp": "bf16" if plan.bf16 else "off (CPU dry run)",
        "channels_last": True,
        "cudnn_benchmark": device.type == "cuda",
    }
    model = _inference_model(plan, device)
    for compiled in (False, True):
        key = "compiled" if compiled else "eager"
        if compiled and time.perf_counter() - t_start > plan.budget_s:
            out[key] = {"skipped": "time budget"}
            continue
        try:
            fn = model
            t0 = time.perf_counter()
            if compiled:
                torch._dynamo.reset()
                fn = torch.compile(model, backend=plan.compile_backend)
            res: dict[str, Any] = {"backend": plan.compile_backend} if compiled else {}
            # the dry run compiles one batch size only (graph capture dominates its run time)
            batches = (
                (1,)
                if compiled and device.type != "cuda"
                else (1, 8 if device.type == "cuda" else plan.batch)
            )
            for b in batches:
                x = torch.randn(b, 3, plan.size, plan.size, device=device).contiguous(
                    memory_format=torch.channels_last
                )
                sizes = [(plan.size, plan.size)] * b

                def run(x=x, sizes=sizes, fn=fn):
                    with torch.inference_mode(), amp(device, plan.bf16):
                        return fn(x, None, sizes)

                if compiled and "compile_s" not in res:
                    run()  # the first call compiles
                    sync(device)
                    res["compile_s"] = time.perf_counter() - t0
                res[f"fps_b{b}"] = fps(run, b, plan.infer_iters, plan.infer_warmup, device)
            out[key] = res
        except Exception as e:  # noqa: BLE001 - a failed compile is a finding, not a crash
            out[key] = {"error": f"{type(e).__name__}: {e}"[:500]}
    return out


def section_torchvision(plan: Plan, device: torch.device) -> dict:
    def make():
        torch.manual_seed(0)
        return (
            torchvision.models.detection.retinanet_resnet50_fpn(
                weights=None,
                weights_backbone=None,
                num_classes=3,
                min_size=plan.size,
                max_size=plan.size,
                score_thresh=0.05,
                nms_thresh=0.5,
                detections_per_img=100,
                topk_candidates=1000,
            )
            .to(device)
            .to(memory_format=torch.channels_last)
        )

    tv = make().eval()
    out: dict[str, Any] = {
        "model": "torchvision retinanet_resnet50_fpn (random weights)",
        "amp": "bf16" if plan.bf16 else "off (CPU dry run)",
        "channels_last": True,
    }
    for b in (1, 8 if device.type == "cuda" else plan.batch):
        imgs = list(
            torch.randn(b, 3, plan.size, plan.size, device=device)
            .contiguous(memory_format=torch.channels_last)
            .unbind(0)
        )

        def run(imgs=imgs):
            with torch.inference_mode(), amp(device, plan.bf16):
                return tv(imgs)

        out[f"fps_b{b}"] = fps(run, b, plan.infer_iters, plan.infer_warmup, device)
    tv = make().train()
    opt = torch.optim.SGD(tv.parameters(), lr=0.01, momentum=0.9)
    batches = synthetic_batches(plan.tv_train_iters, plan.batch, plan.size, device, seed=3)
    times = []
    for images, targets in batches:
        sync(device)
        t0 = time.perf_counter()
        with amp(device, plan.bf16):
            loss = sum(
                tv(
                    list(images.unbind(0)), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]
                ).values()
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    timed = times[min(plan.warmup_iters, len(times) - 1) :]
    out["train_img_s"] = plan.batch * len(timed) / sum(timed)
    return out


def section_deform_core(plan: Plan, device: torch.device) -> dict:
    fns, err, queries = deform_case(plan.size, plan.deform_heads, device)
    t = {
        k: plan.deform_runs / fps(fn, plan.deform_runs, plan.deform_runs, plan.infer_warmup, device)
        for k, fn in fns.items()
    }
    return {
        "queries": queries,
        "heads": plan.deform_heads,
        "core_ms": 1e3 * t["core"],
        "naive_ms": 1e3 * t["naive"],
        "speedup": t["naive"] / t["core"],
        "max_abs_diff": err,
    }


def _ddp_worker(rank: int, world: int, port: int, plan_d: dict, backend: str, out_path: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=world)
    try:
        plan = Plan(**plan_d)
        device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        model = build_symformer(plan, device)
        ddp = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[rank] if device.type == "cuda" else None,
            find_unused_parameters=True,  # stage 1: the classification head gets no gradient (as the trainer)
        )
        batches = synthetic_batches(2, plan.batch, plan.size, device, seed=10 + rank)  # each rank its shard
        losses, times, finite = train_steps(ddp, batches, device, bf16=plan.bf16)
        flat = torch.cat([p.detach().float().flatten() for p in model.parameters()])
        sums = [torch.zeros(2, device=device) for _ in range(world)]
        dist.all_gather(sums, torch.stack([flat.sum(), flat.abs().sum()]))
        if rank == 0:
            same = all(torch.equal(sums[0], s) for s in sums[1:])
            Path(out_path).write_text(
                json.dumps(
                    {
                        "world_size": world,
                        "backend": backend,
                        "losses": losses,
                        "all_losses_finite": finite,
                        "weights_identical": same,
                        "step_ms": 1e3 * statistics.median(times),
                    }
                )
            )
    finally:
        dist.destroy_process_group()


def section_ddp(plan: Plan, device: torch.device, force_cpu: bool, tmp: Path) -> dict:
    n_gpu = torch.cuda.device_count() if device.type == "cuda" else 0
    if n_gpu < 2 and not force_cpu:
        return {"skipped": f"{n_gpu} GPU visible (needs ≥ 2)"}
    import torch.multiprocessing as mp

    backend = "nccl" if n_gpu >= 2 else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp / "ddp.json"
    mp.start_processes(
        _ddp_worker,
        args=(2, port, asdict(plan), backend, str(out)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------------------- report
def goal_rows(res: dict) -> list[tuple[str, str, str, str]]:
    """(what, measured, goal, verdict) rows."""

    def get(*path):
        x: Any = res
        for p in path:
            if not isinstance(x, dict) or p not in x:
                return None
            x = x[p]
        return x

    inf = [v for v in (get("inference", "eager", "fps_b8"), get("inference", "compiled", "fps_b8")) if v]
    rows = []

    def row(what, value, goal, ok, fmt="{:.1f}"):
        rows.append(
            (
                what,
                "–" if value is None else fmt.format(value),
                goal,
                "–" if value is None else ("PASS" if ok(value) else "FAIL"),
            )
        )

    row(
        "inference FPS, batch 8 (best of eager / compiled)",
        max(inf) if inf else None,
        f"≥ {GOALS['inference_fps_b8']:.0f}",
        lambda v: v >= GOALS["inference_fps_b8"],
    )
    row(
        "inference FPS, batch 1 (eager)",
        get("inference", "eager", "fps_b1"),
        f"> {PAPER_FPS_B1} (paper, TITAN XP)",
        lambda v: v > PAPER_FPS_B1,
    )
    row(
        "training img/s, batch 8, bf16",
        get("train", "img_s"),
        f"≥ {GOALS['train_img_s']:.0f}",
        lambda v: v >= GOALS["train_img_s"],
    )
    row(
        "bf16 vs fp32 loss, max relative difference",
        get("bf16_vs_fp32", "max_rel_diff"),
        f"≤ {GOALS['bf16_fp32_rel_diff']:g}",
        lambda v: v <= GOALS["bf16_fp32_rel_diff"],
        "{:.2e}",
    )
    fin = [get(k, "all_losses_finite") for k in ("train", "bf16_vs_fp32", "ddp")]
    fin = [f for f in fin if f is not None]
    row("every loss finite", float(all(fin)) if fin else None, "yes", lambda v: v == 1.0, "{:.0f}")
    tv8 = get("torchvision", "fps_b8")
    ours8 = get("inference", "eager", "fps_b8")
    row(
        "ours / torchvision RetinaNet, inference FPS b8",
        ours8 / tv8 if ours8 and tv8 else None,
        "context",
        lambda v: True,
        "{:.2f}",
    )
    tvt = get("torchvision", "train_img_s")
    row(
        "ours / torchvision RetinaNet, training img/s",
        get("train", "img_s") / tvt if tvt and get("train", "img_s") else None,
        "context",
        lambda v: True,
        "{:.2f}",
    )
    row(
        "deformable core vs naive loop (fwd + bwd)",
        get("deform_core", "speedup"),
        "context",
        lambda v: True,
        "{:.1f}×",
    )
    ddp = get("ddp", "weights_identical")
    row(
        "DDP 2-process step: identical weights",
        None if ddp is None else float(ddp),
        "yes",
        lambda v: v == 1.0,
        "{:.0f}",
    )
    return rows


def run(plan: Plan, out_path: Path, ddp_cpu: bool = False) -> dict:
    t_start = time.perf_counter()
    device = torch.device(plan.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if plan.threads:
        torch.set_num_threads(plan.threads)
    # SPE/STN run once per FPN level (5 shapes) and per batch size: more graphs than dynamo's default
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    res: dict[str, Any] = {
        "schema": "tbx.gpu_check/1",
        "plan": asdict(plan),
        "goals": GOALS,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    sections: list[tuple[str, Callable[[], dict]]] = [
        ("env", lambda: section_env(device)),
        ("train", lambda: section_train(plan, device)),
        ("bf16_vs_fp32", lambda: section_bf16_vs_fp32(plan, device)),
        ("inference", lambda: section_inference(plan, device, t_start)),
        ("torchvision", lambda: section_torchvision(plan, device)),
        ("deform_core", lambda: section_deform_core(plan, device)),
        ("ddp", lambda: section_ddp(plan, device, ddp_cpu, out_path.parent)),
    ]
    for name, fn in sections:
        if name not in ("env", "train") and time.perf_counter() - t_start > plan.budget_s:
            res[name] = {"skipped": "time budget"}
            continue
        t0 = time.perf_counter()
        try:
            res[name] = fn()
        except Exception as e:  # noqa: BLE001 - record and go on: the report must be complete
            res[name] = {
                "error": f"{type(e).__name__}: {e}"[:500],
                "traceback": traceback.format_exc()[-2000:],
            }
        res[name]["section_s"] = round(time.perf_counter() - t0, 2)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        print(f"[{time.perf_counter() - t_start:6.1f} s] {name} done", flush=True)
    res["total_s"] = time.perf_counter() - t_start
    res["goal_table"] = [
        dict(zip(("what", "measured", "goal", "verdict"), r, strict=True)) for r in goal_rows(res)
    ]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1, default=str))
    tmp.replace(out_path)
    return res


def print_table(res: dict) -> None:
    rows = [("what", "measured", "goal", "verdict")] + [tuple(r.values()) for r in res["goal_table"]]
    widths = [max(len(str(r[i])) for r in rows) for i in range(4)]
    for k, r in enumerate(rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    for name in ("env", "train", "bf16_vs_fp32", "inference", "torchvision", "deform_core", "ddp"):
        sec = res.get(name, {})
        if "error" in sec:
            print(f"{name}: ERROR {sec['error']}")
    print(f"total {res['total_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, 128 px, 2 iterations: the same code path")
    ap.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    ap.add_argument("--ddp-cpu", action="store_true", help="run the DDP section with gloo on CPU too")
    ap.add_argument("--budget-s", type=float, default=None, help="skip optional sections past this")
    args = ap.parse_args(argv)
    if args.dry_run:
        plan = Plan.dry_run()
    else:
        if not torch.cuda.is_available():
            print("no CUDA device visible (use --dry-run to exercise the code path on CPU)", file=sys.stderr)
            return 2
        plan = Plan(device="cuda")
    if args.budget_s is not None:
        plan.budget_s = args.budget_s
    res = run(plan, args.out, ddp_cpu=args.ddp_cpu)
    print_table(res)
    print(f"wrote {args.out}")
    errors = [k for k, v in res.items() if isinstance(v, dict) and "error" in v]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
