"""The training loop: the two stages of SPEC §2.7 on CPU or CUDA, one or many processes.

``train(cfg, out_dir, stage="both")`` runs stage I (detection, on the TB images with boxes) then
stage II (the classification head alone, every other weight frozen, starting from the stage-I
weights).  A run directory holds::

    RUN/config.yaml          the resolved TrainConfig
    RUN/provenance.json      command, seed, versions, commit
    RUN/metrics.jsonl        one JSON object per logged iteration / validation / epoch
    RUN/stage{1,2}/last.pt   full training state, rewritten every epoch (and every
                             ``ckpt_every_iters`` iterations); ``--resume`` continues from it
    RUN/stage{1,2}/final.pt  the state at the end of the stage (what ``tbx predict RUN`` uses)
    RUN/stage{1,2}/best.pt   with validation: the best epoch (AP50 in stage I, accuracy in II)

With ``stageN.ema_decay`` an exponential moving average of the weights is kept: ``last.pt``
holds the trained weights and the average (for resume); ``final.pt`` and ``best.pt`` hold the
average as their model, which validation scores and the next stage starts from.

CUDA path: bf16/fp16 autocast (GradScaler for fp16), channels_last, cudnn.benchmark, pinned
memory + non-blocking copies, images shipped as uint8 and normalised on the GPU.  DDP when started
under torchrun (see :mod:`tbx.engine.distributed`); only rank 0 writes.

Resume is exact: the data order and flips are a pure function of (seed, epoch) and the batch
position, and the checkpoint holds every RNG, optimiser, scheduler and scaler state; on CPU an
interrupted-and-resumed run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from tbx.config import to_dict
from tbx.data.dataset import EpochBatchSampler, TBXDataset, collate, normalize_batch
from tbx.engine import distributed as D
from tbx.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint, set_rng_state
from tbx.engine.runs import start_run
from tbx.engine.schedule import TrainConfig, build_optimizer, build_scheduler
from tbx.errors import Interrupted, TbxError
from tbx.io import atomic_write_text
from tbx.provenance import write_provenance

ModelBuilder = Callable[[TrainConfig], nn.Module]


# --------------------------------------------------------------------------------------------
# Model construction, device and precision


def build_model(cfg: TrainConfig) -> nn.Module:
    """The Detector named by ``cfg.model_name`` with ``cfg.model`` (tbx.models.registry)."""
    from tbx.models import registry

    return registry.build(cfg.model_name, cfg.model)


def resolve_device(kind: str, ctx: D.DistContext | None = None) -> torch.device:
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise TbxError("--device cuda requested but CUDA is not available",
                           fix="use --device cpu (or auto), or install a CUDA build of torch")
        return torch.device("cuda", ctx.local_rank if ctx else torch.cuda.current_device())
    return torch.device("cpu")


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (None: full precision).  auto → bf16 on CUDA when supported, else off."""
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise TbxError("--amp fp16 needs CUDA", fix="use --amp bf16 or off on CPU")
        return torch.float16
    if amp == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TbxError("this GPU does not support bf16", fix="use --amp fp16")
        return torch.bfloat16
    raise TbxError(f"unknown --amp '{amp}'", fix="use bf16, fp16, off or auto")


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return rss / 1024


# --------------------------------------------------------------------------------------------
# Logging


class MetricsLog:
    """``RUN/metrics.jsonl`` (append, flushed per line) + TensorBoard when installed."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool = True):
        self.path, self.enabled = path, enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # optional dependency
                self.tb = SummaryWriter(str(path.parent / "tb"))
            except Exception:  # noqa: BLE001 — tensorboard not installed / broken: skip it
                self.tb = None

    def truncate_after(self, stage: int, iteration: int) -> None:
        """On resume: drop entries of ``stage`` logged after ``iteration`` (they will be redone)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("stage") == stage and rec.get("iteration", 0) > iteration:
                continue
            if rec.get("stage", 0) > stage:
                continue
            keep.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            step = rec.get("iteration", 0) + (10**7 if rec.get("stage") == 2 else 0)
            for k, v in rec.items():
                if isinstance(v, (int, float)) and k not in ("stage", "epoch", "iteration"):
                    self.tb.add_scalar(f"stage{rec.get('stage')}/{rec.get('kind', 'train')}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _use_progress_bar(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return sys.stdout.isatty() and not os.environ.get("CI")


# --------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    out_dir: Path
    final: dict[int, Path] = field(default_factory=dict)  # stage → final checkpoint
    best: dict[int, Path] = field(default_factory=dict)
    metrics: Path | None = None

    @property
    def checkpoint(self) -> Path | None:
        """The checkpoint of the last stage trained."""
        return self.final[max(self.final)] if self.final else None


def parse_stages(stage: str | int) -> list[int]:
    s = str(stage).lower()
    if s in ("both", "all", "1,2"):
        return [1, 2]
    if s in ("1", "2"):
        return [int(s)]
    raise TbxError(f"bad --stage '{stage}'", fix="use 1, 2 or both")


def train(cfg: TrainConfig, out_dir: str | Path, stage: str | int = "both", resume: bool = False, *,
          force: bool = False, model_builder: ModelBuilder | None = None,
          callback: Callable[[dict], None] | None = None, progress: bool | None = None) -> TrainResult:
    """Train ``cfg`` into ``out_dir`` (see the module docstring for the layout).

    ``resume``: continue every stage from its ``last.pt`` (finished stages are skipped); ``force``:
    replace an existing run (rules: :mod:`tbx.engine.runs`).
    ``model_builder``: build the model from the config (default: :func:`build_model`).
    ``callback``: called on rank 0 after every iteration (after any checkpoint) with a dict
    ``{"stage", "epoch", "iteration", "losses", "lr"}`` — e.g. to stop a run from a notebook.
    """
    out = Path(out_dir)
    stages = parse_stages(stage)
    want = cfg.device
    ctx = D.init_distributed("cuda" if (want == "cuda" or (want == "auto" and torch.cuda.is_available()))
                             else "cpu")
    try:
        device = resolve_device(cfg.device, ctx)
        amp_dtype = resolve_amp(cfg.amp, device)
        if not cfg.data.root:
            raise TbxError("no data root given", fix="pass --data ROOT (a TBX11K-layout folder)")
        created = not out.exists()  # a failed start removes a run directory it created itself
        builder = model_builder or build_model
        if ctx.is_main:
            try:
                start_run(out, cfg, stages, resume=resume, force=force, builder=builder)
                write_provenance(out, cfg, cfg.seed, name="provenance_resume.json" if resume else
                                 "provenance.json", stages=stages, resume=resume,
                                 world_size=ctx.world_size, device=str(device))
            except BaseException:
                if created and out.exists():
                    shutil.rmtree(out, ignore_errors=True)  # e.g. a full disk: no half-made run
                raise
        D.barrier(ctx)
        log = MetricsLog(out / "metrics.jsonl", enabled=ctx.is_main)
        result = TrainResult(out, metrics=out / "metrics.jsonl")
        try:
            for s in stages:
                final, best = _train_stage(cfg, s, out, resume, builder, device, amp_dtype, ctx, log,
                                           callback, _use_progress_bar(progress) and ctx.is_main)
                if final is not None:
                    result.final[s] = final
                if best is not None:
                    result.best[s] = best
        except (TbxError, OSError, ValueError, RuntimeError, Interrupted) as e:
            log.close()
            if ctx.is_main and created and not resume and not any(out.rglob("*.pt")):
                shutil.rmtree(out, ignore_errors=True)  # nothing trained: leave no half-made run
            elif isinstance(e, Interrupted) and not resume:
                e.hint = "interrupted — rerun the same command with --resume to continue"
            raise
        finally:
            log.close()
        return result
    finally:
        D.shutdown(ctx)


def _stage_init_weights(cfg: TrainConfig, s: int, out: Path) -> Path | None:
    sc = cfg.stage(s)
    if sc.init_from:
        p = Path(sc.init_from)
        return p / "stage1" / "final.pt" if p.is_dir() else p
    if s == 2:
        # SPEC §2.7: stage II starts from the stage-I weights (the official R50 config forgot to).
        p = out / "stage1" / "final.pt"
        if not p.is_file():
            raise TbxError("stage 2 needs the stage-1 weights, but there is no stage1/final.pt", out,
                           "run stage 1 first (--stage 1 or both) or set --set stage2.init_from=CKPT")
        return p
    return None


def _train_stage(cfg: TrainConfig, s: int, out: Path, resume: bool, builder: ModelBuilder,
                 device: torch.device, amp_dtype: torch.dtype | None, ctx: D.DistContext,
                 log: MetricsLog, callback, show_progress: bool) -> tuple[Path | None, Path | None]:
    sc = cfg.stage(s)
    sdir = out / f"stage{s}"
    last_p, final_p, best_p = sdir / "last.pt", sdir / "final.pt", sdir / "best.pt"
    if sc.epochs == 0:
        return None, None
    if resume and final_p.is_file():
        return final_p, best_p if best_p.is_file() else None
    if ctx.is_main:
        sdir.mkdir(parents=True, exist_ok=True)

    seed_everything(cfg.seed + 1000 * s)
    model = builder(cfg)
    model_name = cfg.model_name
    cfg_dict = to_dict(cfg)

    state = None
    if resume and last_p.is_file():
        state = load_checkpoint(last_p, "cpu", expect_model=model_name)
        load_model_weights(model, state["model"], last_p)
    else:
        init = _stage_init_weights(cfg, s, out)
        if init is not None:
            init_state = load_checkpoint(init, "cpu", expect_model=model_name)
            load_model_weights(model, init_state["model"], init)
            del init_state
        if hasattr(model, "start_stage"):
            model.start_stage(s)
    if hasattr(model, "set_stage"):
        weights = sc.loss_weights(s)
        knobs = f"stage{s}.detection_weight / stage{s}.image_cls_weight"
        if min(weights) < 0 or max(weights) <= 0:
            raise TbxError(f"stage{s} loss weights must be ≥ 0 and not both 0 (got {weights})",
                           where=str(out), fix=f"set {knobs}")
        try:
            model.set_stage(s, sc.trainable, weights)
        except ValueError as e:  # joint losses on a model without them
            raise TbxError(f"{model_name}: {e}", where=str(out),
                           fix=f"drop {knobs} (joint losses exist for the RetinaNet models)") from None
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if cfg.channels_last:  # faster convolutions with cuDNN and with oneDNN on CPU
        model.to(memory_format=torch.channels_last)
    model.train()

    ann = cfg.data.stage1_ann if s == 1 else cfg.data.stage2_ann
    dataset = TBXDataset(cfg.data.root, ann, cfg.model.input_size, train=True)
    sampler = EpochBatchSampler(len(dataset), sc.batch_size, seed=cfg.seed + 1000 * s,
                                rank=ctx.rank, world_size=ctx.world_size,
                                flip_prob=cfg.data.flip_prob)
    ipe = sampler.batches_per_epoch
    optimizer = build_optimizer(model, sc)
    scheduler = build_scheduler(optimizer, ipe, sc)
    scaler = torch.amp.GradScaler(device.type, enabled=(amp_dtype == torch.float16))

    ema = (AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(sc.ema_decay), use_buffers=True)
           if sc.ema_decay > 0 else None)

    start_epoch, start_batch, iteration = 0, 0, 0
    best_metric = -math.inf
    resumed = state is not None
    if resumed:
        if ema is not None:
            if "ema" not in state:
                raise TbxError(f"stage{s}.ema_decay is set but the checkpoint holds no weight average",
                               last_p, f"resume with the run's own config (stage{s}.ema_decay=0) "
                               "or start the stage afresh without --resume")
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_batch, iteration = state["epoch"], state["batch"], state["iteration"]
        best_metric = state.get("extra", {}).get("best_metric", -math.inf)
        if ctx.world_size == 1 or state["extra"].get("world_size", 1) == ctx.world_size:
            set_rng_state(state["rng"])
        log.truncate_after(s, iteration)
        del state

    if not resumed and s == 1 and cfg.bn_calibration_batches > 0 and _stage_init_weights(cfg, s, out) is None:
        calibrate_bn(model, dataset, sampler, cfg.bn_calibration_batches, device, cfg.seed)

    ddp_model = model
    if ctx.distributed:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            # stage 1: the classification head gets no loss (contract in tbx.models.base)
            find_unused_parameters=(s == 1))

    workers = max(0, cfg.data.workers)
    loader = DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )

    total = sc.epochs * ipe
    progress = None
    if show_progress:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        progress = Progress(TextColumn(f"stage {s}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"))
        progress.start()
        task = progress.add_task("train", total=total, completed=iteration, info="")

    # the weights that are evaluated and handed on (final/best checkpoints, the next stage)
    eval_model = ema.module if ema is not None else model

    def checkpoint(path: Path, epoch: int, batch: int, weights: nn.Module = model) -> None:
        if ctx.is_main:
            save_checkpoint(path, model=weights, model_name=model_name, config=cfg_dict, stage=s,
                            epoch=epoch, batch=batch, iteration=iteration, optimizer=optimizer,
                            scheduler=scheduler, scaler=scaler,
                            sampler={"seed": sampler.seed, "epoch": epoch, "batch": batch},
                            extra={"best_metric": best_metric, "world_size": ctx.world_size,
                                   "iters_per_epoch": ipe}, ema=ema)

    win_t0, win_wait, win_imgs, win_losses, win_n = time.perf_counter(), 0.0, 0, {}, 0
    try:
        for epoch in range(start_epoch, sc.epochs):
            sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
            batch_idx = sampler.start_batch
            t_wait = time.perf_counter()
            for batch in loader:
                win_wait += time.perf_counter() - t_wait
                images = batch.images.to(device, non_blocking=True)
                images = normalize_batch(images, batch.image_sizes)
                if cfg.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                targets = batch.targets_to(device)
                with autocast(device, amp_dtype):
                    losses = ddp_model(images, targets, batch.image_sizes)
                loss = sum(losses.values())
                # Every rank sees the same (mean) values → consistent NaN stop and logging.
                vals = D.all_reduce_mean(torch.stack([loss.detach().float()] +
                                                     [v.detach().float() for v in losses.values()]), ctx)
                vals = vals.tolist()
                if not all(math.isfinite(v) for v in vals):
                    bad = {k: v for k, v in zip(["loss", *losses], vals) if not math.isfinite(v)}
                    raise TbxError(
                        f"non-finite loss at stage {s}, epoch {epoch + 1}, iteration {iteration + 1} "
                        f"({', '.join(f'{k}={v}' for k, v in bad.items())}); training stopped",
                        last_p if last_p.is_file() else sdir,
                        "the last good checkpoint is kept; lower the learning rate, use --amp off or "
                        "bf16, or set a grad_clip, then --resume")
                lr = optimizer.param_groups[0]["lr"]  # the lr of this iteration
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if sc.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(
                        [p for g in optimizer.param_groups for p in g["params"]], sc.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                iteration += 1
                batch_idx += 1
                win_imgs += len(batch) * ctx.world_size
                win_n += 1
                for k, v in zip(["loss", *losses], vals):
                    win_losses[k] = win_losses.get(k, 0.0) + v
                if iteration % max(1, cfg.log_every) == 0 or batch_idx == ipe:
                    dt = time.perf_counter() - win_t0
                    rec = {"kind": "train", "stage": s, "epoch": epoch + 1, "iteration": iteration,
                           "lr": lr, **{k: v / win_n for k, v in win_losses.items()},
                           "img_s": win_imgs / dt if dt > 0 else 0.0,
                           "data_wait": win_wait / dt if dt > 0 else 0.0,
                           "peak_mem_mb": peak_memory_mb(device)}
                    log.write(rec)
                    if progress is not None:
                        progress.update(task, info=f"loss {rec['loss']:.4f} lr {lr:.2e} "
                                                   f"{rec['img_s']:.1f} img/s")
                    win_t0, win_wait, win_imgs, win_losses, win_n = time.perf_counter(), 0.0, 0, {}, 0
                if progress is not None:
                    progress.update(task, completed=iteration)
                if cfg.ckpt_every_iters and iteration % cfg.ckpt_every_iters == 0 and batch_idx < ipe:
                    checkpoint(last_p, epoch, batch_idx)
                if callback is not None and ctx.is_main:
                    callback({"stage": s, "epoch": epoch, "iteration": iteration,
                              "losses": dict(zip(["loss", *losses], vals)), "lr": lr})
                t_wait = time.perf_counter()
            # end of epoch
            if cfg.val_ann and ((epoch + 1) % max(1, cfg.val_every) == 0 or epoch + 1 == sc.epochs):
                metric = _validate(cfg, s, eval_model, device, amp_dtype, ctx, log, epoch, iteration,
                                   sdir)
                if metric is not None and metric > best_metric:
                    best_metric = metric
                    checkpoint(best_p, epoch + 1, 0, eval_model)
            checkpoint(last_p, epoch + 1, 0)
            D.barrier(ctx)
        if ctx.is_main:
            checkpoint(final_p, sc.epochs, 0, eval_model)
            log.write({"kind": "stage_end", "stage": s, "iteration": iteration,
                       "epoch": sc.epochs, "checkpoint": str(final_p)})
        D.barrier(ctx)
    finally:
        if progress is not None:
            progress.stop()
        del loader
    return final_p, (best_p if best_p.is_file() else None)


@torch.no_grad()
def calibrate_bn(model: nn.Module, dataset: TBXDataset, sampler: EpochBatchSampler, n_batches: int,
                 device: torch.device, seed: int) -> None:
    """Estimate the running statistics of the backbone's (frozen) BatchNorm layers on
    ``n_batches`` training batches (cumulative average), without touching any weight.  Used for
    from-scratch backbones, whose default statistics (mean 0, var 1) would not normalise at all.
    Deterministic: the batches are those of a dedicated sampler epoch (-1)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = {id(m): m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
        m.train()
    cal = EpochBatchSampler(len(dataset), sampler.per_rank, seed=seed + 7919, flip_prob=0.5)
    cal.set_epoch(0)
    for i, keys in enumerate(cal):
        if i >= n_batches:
            break
        b = collate([dataset[k] for k in keys])
        backbone(normalize_batch(b.images.to(device), b.image_sizes))
    for m in bns:
        m.momentum = saved[id(m)]
    model.train(model.training)  # back to the contract's modes (backbone BN in eval)
    if D.env_world_size() > 1 and torch.distributed.is_initialized():
        for m in bns:  # identical statistics on every rank
            torch.distributed.broadcast(m.running_mean, 0)
            torch.distributed.broadcast(m.running_var, 0)


def _validate(cfg: TrainConfig, s: int, model: nn.Module, device: torch.device,
              amp_dtype: torch.dtype | None, ctx: D.DistContext, log: MetricsLog, epoch: int,
              iteration: int, sdir: Path) -> float | None:
    """Predict ``cfg.val_ann`` on rank 0 and score it with the bench library: AP50 (tb-only,
    category-agnostic) in stage I, accuracy in stage II.  Returns the metric on every rank."""
    from tbx.engine.predict import evaluate_predictions, predict_dataset, write_predictions

    metric_t = torch.zeros(1, device=device)
    if ctx.is_main:
        was_training = model.training
        ds = TBXDataset(cfg.data.root, cfg.val_ann, cfg.model.input_size, train=False)
        probs, dets = predict_dataset(model, ds, cfg.val_batch_size, device, amp_dtype,
                                      workers=min(2, cfg.data.workers))
        model.train(was_training)
        pdir = sdir / "val" / f"epoch_{epoch + 1:03d}"
        write_predictions(pdir, probs, dets)
        scores = evaluate_predictions(ds.ann_path, pdir)
        key = "cat_agnostic_ap50" if s == 1 else "accuracy"
        metric = scores.get(key)
        log.write({"kind": "val", "stage": s, "epoch": epoch + 1, "iteration": iteration,
                   "metric": key, **{k: v for k, v in scores.items() if isinstance(v, (int, float))}})
        metric_t[0] = float("nan") if metric is None else float(metric)
    if ctx.distributed:
        torch.distributed.broadcast(metric_t, 0)
    m = float(metric_t.item())
    return None if math.isnan(m) else m
