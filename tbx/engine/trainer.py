"""The training loop: the two stages of docs/models.md §2.7 on CPU or CUDA, one or many processes.

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
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader

from tbx.config import to_dict
from tbx.data.dataset import EpochBatchSampler, TBXDataset, collate, normalize_batch
from tbx.engine import distributed as D
from tbx.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint, set_rng_state
from tbx.engine.runs import start_run
from tbx.engine.runtime import (
    ProgressBar,
    autocast,
    peak_memory_mb,
    resolve_amp,
    resolve_device,
    seed_everything,
    use_progress_bar,
)
from tbx.engine.schedule import StageConfig, TrainConfig, build_optimizer, build_scheduler
from tbx.errors import Interrupted, TbxError
from tbx.io import atomic_write_text
from tbx.models.registry import build
from tbx.provenance import write_provenance

ModelBuilder = Callable[[TrainConfig], nn.Module]
Callback = Callable[[dict[str, Any]], None]


def build_from_config(cfg: TrainConfig) -> nn.Module:
    """The default model builder: ``cfg.model_name`` with ``cfg.model`` (:mod:`tbx.models.registry`)."""
    return build(cfg.model_name, cfg.model)


# --------------------------------------------------------------------------------------------
# Logging


class MetricsLog:
    """``RUN/metrics.jsonl`` (append, flushed per line) + TensorBoard when installed."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool = True):
        self.path, self.enabled = path, enabled
        self.tb: Any = None
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


class _Window:
    """Averages over the iterations since the last log line: losses, images/s, data-wait share."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.t0, self.wait, self.images, self.n = time.perf_counter(), 0.0, 0, 0
        self.losses: dict[str, float] = {}

    def add(self, losses: dict[str, float], images: int) -> None:
        self.images += images
        self.n += 1
        for k, v in losses.items():
            self.losses[k] = self.losses.get(k, 0.0) + v

    def record(self) -> dict[str, float]:
        dt = time.perf_counter() - self.t0
        return {
            **{k: v / self.n for k, v in self.losses.items()},
            "img_s": self.images / dt if dt > 0 else 0.0,
            "data_wait": self.wait / dt if dt > 0 else 0.0,
        }


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


@dataclass
class _Run:
    """What every stage of one :func:`train` call shares."""

    cfg: TrainConfig
    out: Path
    resume: bool
    builder: ModelBuilder
    device: torch.device
    amp_dtype: torch.dtype | None
    ctx: D.DistContext
    log: MetricsLog
    callback: Callback | None
    show_progress: bool


@dataclass
class _Stage:
    """One stage's training objects and position — what its checkpoints hold."""

    s: int
    sdir: Path
    model: nn.Module
    dataset: TBXDataset
    sampler: EpochBatchSampler
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None
    epoch: int = 0  # where the loop (re)starts: epoch and batch within it
    batch: int = 0
    iteration: int = 0
    best_metric: float = -math.inf

    @property
    def last(self) -> Path:
        return self.sdir / "last.pt"

    @property
    def final(self) -> Path:
        return self.sdir / "final.pt"

    @property
    def best(self) -> Path:
        return self.sdir / "best.pt"

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are evaluated and handed on (final/best checkpoints, the next stage)."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def iters_per_epoch(self) -> int:
        return self.sampler.batches_per_epoch


def parse_stages(stage: str | int) -> list[int]:
    s = str(stage).lower()
    if s in ("both", "all", "1,2"):
        return [1, 2]
    if s in ("1", "2"):
        return [int(s)]
    raise TbxError(f"bad --stage '{stage}'", fix="use 1, 2 or both")


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    stage: str | int = "both",
    resume: bool = False,
    *,
    force: bool = False,
    model_builder: ModelBuilder | None = None,
    callback: Callback | None = None,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``cfg`` into ``out_dir`` (see the module docstring for the layout).

    ``resume``: continue every stage from its ``last.pt`` (finished stages are skipped); ``force``:
    replace an existing run (rules: :mod:`tbx.engine.runs`).
    ``model_builder``: build the model from the config (default: :func:`build_from_config`).
    ``callback``: called on rank 0 after every iteration (after any checkpoint) with a dict
    ``{"stage", "epoch", "iteration", "losses", "lr"}`` — e.g. to stop a run from a notebook.
    """
    out = Path(out_dir)
    stages = parse_stages(stage)
    want = cfg.device
    ctx = D.init_distributed(
        "cuda" if (want == "cuda" or (want == "auto" and torch.cuda.is_available())) else "cpu"
    )
    try:
        device = resolve_device(cfg.device, ctx)
        amp_dtype = resolve_amp(cfg.amp, device)
        if not cfg.data.root:
            raise TbxError("no data root given", fix="pass --data ROOT (a TBX11K-layout folder)")
        created = not out.exists()  # a failed start removes a run directory it created itself
        builder = model_builder or build_from_config
        if ctx.is_main:
            try:
                start_run(out, cfg, stages, resume=resume, force=force, builder=builder)
                write_provenance(
                    out,
                    cfg,
                    cfg.seed,
                    name="provenance_resume.json" if resume else "provenance.json",
                    stages=stages,
                    resume=resume,
                    world_size=ctx.world_size,
                    device=str(device),
                )
            except BaseException:
                if created and out.exists():
                    shutil.rmtree(out, ignore_errors=True)  # e.g. a full disk: no half-made run
                raise
        D.barrier(ctx)
        log = MetricsLog(out / "metrics.jsonl", enabled=ctx.is_main)
        result = TrainResult(out, metrics=out / "metrics.jsonl")
        run = _Run(
            cfg,
            out,
            resume,
            builder,
            device,
            amp_dtype,
            ctx,
            log,
            callback,
            use_progress_bar(progress) and ctx.is_main,
        )
        try:
            for s in stages:
                final, best = _train_stage(run, s)
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


def _train_stage(run: _Run, s: int) -> tuple[Path | None, Path | None]:
    """One stage: build (or restore) it, loop over its epochs, write ``final.pt``."""
    cfg, ctx, sc = run.cfg, run.ctx, run.cfg.stage(s)
    sdir = run.out / f"stage{s}"
    final_p, best_p = sdir / "final.pt", sdir / "best.pt"
    if sc.epochs == 0:
        return None, None
    if run.resume and final_p.is_file():
        return final_p, best_p if best_p.is_file() else None
    if ctx.is_main:
        sdir.mkdir(parents=True, exist_ok=True)

    seed_everything(cfg.seed + 1000 * s)
    model, state = _stage_model(run, s, sdir)
    st = _stage_objects(run, s, sdir, model)
    if state is not None:
        _restore(run, st, state)
        del state
    ddp_model = _wrap_ddp(run, st)
    loader = _loader(run, st)
    bar = ProgressBar(
        f"stage {s}", total=sc.epochs * st.iters_per_epoch, completed=st.iteration, enabled=run.show_progress
    )
    window = _Window()
    try:
        for epoch in range(st.epoch, sc.epochs):
            st.sampler.set_epoch(epoch, st.batch if epoch == st.epoch else 0)
            train_one_epoch(run, st, ddp_model, loader, epoch, window, bar)
            _end_epoch(run, st, epoch)
        if ctx.is_main:
            _checkpoint(run, st, st.final, sc.epochs, 0, st.eval_model)
            run.log.write(
                {
                    "kind": "stage_end",
                    "stage": s,
                    "iteration": st.iteration,
                    "epoch": sc.epochs,
                    "checkpoint": str(st.final),
                }
            )
        D.barrier(ctx)
    finally:
        bar.close()
        del loader
    return final_p, (best_p if best_p.is_file() else None)


def _stage_init_weights(cfg: TrainConfig, s: int, out: Path) -> Path | None:
    sc = cfg.stage(s)
    if sc.init_from:
        p = Path(sc.init_from)
        return p / "stage1" / "final.pt" if p.is_dir() else p
    if s == 2:
        # docs/models.md §2.7: stage II starts from the stage-I weights (the official R50 config forgot to).
        p = out / "stage1" / "final.pt"
        if not p.is_file():
            raise TbxError(
                "stage 2 needs the stage-1 weights, but there is no stage1/final.pt",
                out,
                "run stage 1 first (--stage 1 or both) or set --set stage2.init_from=CKPT",
            )
        return p
    return None


def _stage_model(run: _Run, s: int, sdir: Path) -> tuple[nn.Module, dict[str, Any] | None]:
    """The stage's model on its device, in train mode, its trainable parts set: from ``last.pt`` on
    resume (returned with the rest of that state), else from the stage's initial weights."""
    cfg, sc = run.cfg, run.cfg.stage(s)
    model = run.builder(cfg)
    state = None
    last_p = sdir / "last.pt"
    if run.resume and last_p.is_file():
        state = load_checkpoint(last_p, "cpu", expect_model=cfg.model_name)
        load_model_weights(model, state["model"], last_p)
    else:
        init = _stage_init_weights(cfg, s, run.out)
        if init is not None:
            init_state = load_checkpoint(init, "cpu", expect_model=cfg.model_name)
            load_model_weights(model, init_state["model"], init)
            del init_state
        if hasattr(model, "start_stage"):
            cast(Any, model).start_stage(s)
    if hasattr(model, "set_stage"):
        _set_stage(model, s, sc, cfg.model_name, run.out)
    model.to(run.device)
    if run.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if cfg.channels_last:  # faster convolutions with cuDNN and with oneDNN on CPU
        model.to(memory_format=torch.channels_last)
    model.train()
    return model, state


def _set_stage(model: nn.Module, s: int, sc: StageConfig, model_name: str, out: Path) -> None:
    """``model.set_stage`` with the stage's trainable modules and loss weights, errors as TbxError."""
    weights = sc.loss_weights(s)
    knobs = f"stage{s}.detection_weight / stage{s}.image_cls_weight"
    if min(weights) < 0 or max(weights) <= 0:
        raise TbxError(
            f"stage{s} loss weights must be ≥ 0 and not both 0 (got {weights})",
            where=str(out),
            fix=f"set {knobs}",
        )
    try:
        cast(Any, model).set_stage(s, sc.trainable, weights)
    except ValueError as e:  # joint losses on a model without them
        raise TbxError(
            f"{model_name}: {e}",
            where=str(out),
            fix=f"drop {knobs} (joint losses exist for the RetinaNet models)",
        ) from None


def _stage_objects(run: _Run, s: int, sdir: Path, model: nn.Module) -> _Stage:
    """Dataset, sampler, optimiser, LR schedule, AMP scaler and weight average of a fresh stage."""
    cfg, sc, ctx = run.cfg, run.cfg.stage(s), run.ctx
    ann = cfg.data.stage1_ann if s == 1 else cfg.data.stage2_ann
    dataset = TBXDataset(cfg.data.root, ann, cfg.model.input_size, train=True)
    sampler = EpochBatchSampler(
        len(dataset),
        sc.batch_size,
        seed=cfg.seed + 1000 * s,
        rank=ctx.rank,
        world_size=ctx.world_size,
        flip_prob=cfg.data.flip_prob,
    )
    optimizer = build_optimizer(model, sc)
    scheduler = build_scheduler(optimizer, sampler.batches_per_epoch, sc)
    scaler = torch.amp.GradScaler(run.device.type, enabled=(run.amp_dtype == torch.float16))
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(sc.ema_decay), use_buffers=True)
        if sc.ema_decay > 0
        else None
    )
    return _Stage(s, sdir, model, dataset, sampler, optimizer, scheduler, scaler, ema)


def _restore(run: _Run, st: _Stage, state: dict[str, Any]) -> None:
    """Continue from ``last.pt``: weight average, optimiser, schedule, scaler, position, RNGs."""
    s, ctx = st.s, run.ctx
    if st.ema is not None:
        if "ema" not in state:
            raise TbxError(
                f"stage{s}.ema_decay is set but the checkpoint holds no weight average",
                st.last,
                f"resume with the run's own config (stage{s}.ema_decay=0) "
                "or start the stage afresh without --resume",
            )
        st.ema.load_state_dict(state["ema"])
    st.optimizer.load_state_dict(state["optimizer"])
    st.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler") and st.scaler.is_enabled():
        st.scaler.load_state_dict(state["scaler"])
    st.epoch, st.batch, st.iteration = state["epoch"], state["batch"], state["iteration"]
    st.best_metric = state.get("extra", {}).get("best_metric", -math.inf)
    if ctx.world_size == 1 or state["extra"].get("world_size", 1) == ctx.world_size:
        set_rng_state(state["rng"])
    run.log.truncate_after(s, st.iteration)


def _wrap_ddp(run: _Run, st: _Stage) -> nn.Module:
    """The model under DDP when distributed, else the model itself."""
    if not run.ctx.distributed:
        return st.model
    return nn.parallel.DistributedDataParallel(
        st.model,
        device_ids=[run.device.index] if run.device.type == "cuda" else None,
        # stage 1: the classification head gets no loss (contract in tbx.models.base)
        find_unused_parameters=(st.s == 1),
    )


def _loader(run: _Run, st: _Stage) -> DataLoader[Any]:
    cfg, workers = run.cfg, max(0, run.cfg.data.workers)
    return DataLoader(
        st.dataset,
        batch_sampler=st.sampler,
        collate_fn=collate,
        num_workers=workers,
        pin_memory=run.device.type == "cuda",
        persistent_workers=workers > 0,
        prefetch_factor=cfg.data.prefetch_factor if workers > 0 else None,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )


def _checkpoint(
    run: _Run, st: _Stage, path: Path, epoch: int, batch: int, weights: nn.Module | None = None
) -> None:
    """Rank 0 writes the stage's state at (``epoch``, ``batch``) with ``weights`` as its model."""
    if run.ctx.is_main:
        save_checkpoint(
            path,
            model=weights if weights is not None else st.model,
            model_name=run.cfg.model_name,
            config=to_dict(run.cfg),
            stage=st.s,
            epoch=epoch,
            batch=batch,
            iteration=st.iteration,
            optimizer=st.optimizer,
            scheduler=st.scheduler,
            scaler=st.scaler,
            sampler={"seed": st.sampler.seed, "epoch": epoch, "batch": batch},
            extra={
                "best_metric": st.best_metric,
                "world_size": run.ctx.world_size,
                "iters_per_epoch": st.iters_per_epoch,
            },
            ema=st.ema,
        )


def train_one_epoch(
    run: _Run,
    st: _Stage,
    ddp_model: nn.Module,
    loader: DataLoader[Any],
    epoch: int,
    window: _Window,
    bar: ProgressBar,
) -> None:
    """One pass over the loader (from the sampler's start batch): a step per batch, a log line
    every ``log_every`` iterations, mid-epoch checkpoints, the callback."""
    cfg, ctx = run.cfg, run.ctx
    batch_idx = st.sampler.start_batch
    ipe = st.iters_per_epoch
    t_wait = time.perf_counter()
    for batch in loader:
        window.wait += time.perf_counter() - t_wait
        images = batch.images.to(run.device, non_blocking=True)
        images = normalize_batch(images, batch.image_sizes)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        losses, lr = _step(run, st, ddp_model, images, batch.targets_to(run.device), batch.image_sizes, epoch)
        st.iteration += 1
        batch_idx += 1
        window.add(losses, len(batch) * ctx.world_size)
        if st.iteration % max(1, cfg.log_every) == 0 or batch_idx == ipe:
            rec = {
                "kind": "train",
                "stage": st.s,
                "epoch": epoch + 1,
                "iteration": st.iteration,
                "lr": lr,
                **window.record(),
                "peak_mem_mb": peak_memory_mb(run.device),
            }
            run.log.write(rec)
            bar.update(info=f"loss {rec['loss']:.4f} lr {lr:.2e} {rec['img_s']:.1f} img/s")
            window.reset()
        bar.update(completed=st.iteration)
        if cfg.ckpt_every_iters and st.iteration % cfg.ckpt_every_iters == 0 and batch_idx < ipe:
            _checkpoint(run, st, st.last, epoch, batch_idx)
        if run.callback is not None and ctx.is_main:
            run.callback(
                {"stage": st.s, "epoch": epoch, "iteration": st.iteration, "losses": losses, "lr": lr}
            )
        t_wait = time.perf_counter()


def _step(
    run: _Run,
    st: _Stage,
    ddp_model: nn.Module,
    images: torch.Tensor,
    targets: list[dict[str, torch.Tensor]],
    image_sizes: Any,
    epoch: int,
) -> tuple[dict[str, float], float]:
    """Forward, loss check, backward, clip, optimiser / scheduler / EMA step.  Returns the losses
    (mean over ranks, ``loss`` = their sum first) and the lr of this iteration."""
    sc = run.cfg.stage(st.s)
    with autocast(run.device, run.amp_dtype):
        losses = ddp_model(images, targets, image_sizes)
    loss = sum(losses.values())
    # Every rank sees the same (mean) values → consistent NaN stop and logging.
    vals = D.all_reduce_mean(
        torch.stack([loss.detach().float()] + [v.detach().float() for v in losses.values()]), run.ctx
    ).tolist()
    named = dict(zip(["loss", *losses], vals))
    if not all(math.isfinite(v) for v in vals):
        bad = {k: v for k, v in named.items() if not math.isfinite(v)}
        raise TbxError(
            f"non-finite loss at stage {st.s}, epoch {epoch + 1}, iteration {st.iteration + 1} "
            f"({', '.join(f'{k}={v}' for k, v in bad.items())}); training stopped",
            st.last if st.last.is_file() else st.sdir,
            "the last good checkpoint is kept; lower the learning rate, use --amp off or "
            "bf16, or set a grad_clip, then --resume",
        )
    lr = st.optimizer.param_groups[0]["lr"]  # the lr of this iteration
    st.optimizer.zero_grad(set_to_none=True)
    st.scaler.scale(loss).backward()
    if sc.grad_clip:
        st.scaler.unscale_(st.optimizer)
        torch.nn.utils.clip_grad_norm_(
            [p for g in st.optimizer.param_groups for p in g["params"]], sc.grad_clip
        )
    st.scaler.step(st.optimizer)
    st.scaler.update()
    st.scheduler.step()
    if st.ema is not None:
        st.ema.update_parameters(st.model)
    return named, lr


def _end_epoch(run: _Run, st: _Stage, epoch: int) -> None:
    """Validate when due (``best.pt`` on a new best), then ``last.pt`` at the epoch boundary."""
    cfg, sc = run.cfg, run.cfg.stage(st.s)
    if cfg.val_ann and ((epoch + 1) % max(1, cfg.val_every) == 0 or epoch + 1 == sc.epochs):
        metric = _validate(run, st, epoch, cfg.val_ann)
        if metric is not None and metric > st.best_metric:
            st.best_metric = metric
            _checkpoint(run, st, st.best, epoch + 1, 0, st.eval_model)
    _checkpoint(run, st, st.last, epoch + 1, 0)
    D.barrier(run.ctx)


def _validate(run: _Run, st: _Stage, epoch: int, ann: str) -> float | None:
    """Predict ``ann`` (``cfg.val_ann``) on rank 0 and score it with the bench library: AP50 (tb-only,
    category-agnostic) in stage I, accuracy in stage II.  Returns the metric on every rank."""
    from tbx.engine.predict import evaluate_predictions, predict_dataset, write_predictions

    cfg, ctx, model = run.cfg, run.ctx, st.eval_model
    metric_t = torch.zeros(1, device=run.device)
    if ctx.is_main:
        was_training = model.training
        ds = TBXDataset(cfg.data.root, ann, cfg.model.input_size, train=False)
        probs, dets = predict_dataset(
            model, ds, cfg.val_batch_size, run.device, run.amp_dtype, workers=min(2, cfg.data.workers)
        )
        model.train(was_training)
        pdir = st.sdir / "val" / f"epoch_{epoch + 1:03d}"
        write_predictions(pdir, probs, dets)
        scores = evaluate_predictions(ds.ann_path, pdir)
        key = "cat_agnostic_ap50" if st.s == 1 else "accuracy"
        metric = scores.get(key)
        run.log.write(
            {
                "kind": "val",
                "stage": st.s,
                "epoch": epoch + 1,
                "iteration": st.iteration,
                "metric": key,
                **{k: v for k, v in scores.items() if isinstance(v, (int, float))},
            }
        )
        metric_t[0] = float("nan") if metric is None else float(metric)
    if ctx.distributed:
        torch.distributed.broadcast(metric_t, 0)
    m = float(metric_t.item())
    return None if math.isnan(m) else m
