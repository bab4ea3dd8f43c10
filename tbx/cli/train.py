"""`tbx train` — the two-stage schedule (docs/models.md §2.7) on CPU or CUDA, one or many GPUs."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from tbx.errors import TbxError


def train(
    model: str = typer.Argument(
        None,
        help="Model: symformer (= symformer_retinanet, the default), "
        "symformer_p2t (its P2T-Small preset), retinanet, faster_rcnn, "
        "fcos, ssd, deformable_detr, symformer_deformable_detr. With --resume: "
        "the run's model.",
        show_default=False,
    ),
    data: Path = typer.Option(..., "--data", help="TBX11K-layout dataset root."),
    out: Path = typer.Option(..., "--out", help="Run directory (config, metrics, checkpoints)."),
    config: str = typer.Option(
        None,
        "--config",
        help="Preset name (e.g. tiny, "
        "symformer_retinanet_r50) or YAML file; default: the model's paper "
        "preset. With --resume: RUN/config.yaml.",
    ),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override a config key, e.g. --set stage1.lr=0.01 --set model.input_size=256 (repeatable).",
    ),
    stage: str = typer.Option(
        "both", "--stage", help="1 (detection), 2 (classification head, from the stage-1 weights) or both."
    ),
    device: str = typer.Option(None, "--device", help="auto | cuda | cpu (default: config, auto)."),
    amp: str = typer.Option(
        None, "--amp", help="bf16 | fp16 | off | auto (default: bf16 on CUDA, off on CPU)."
    ),
    gpus: int = typer.Option(
        0,
        "--gpus",
        min=0,
        help="Launch N processes with torchrun on this machine (DDP). For "
        "several machines run torchrun yourself: torchrun --nnodes … -m tbx train …",
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue an interrupted run from its "
        "last checkpoint (exactly), with its config.yaml (--set may only "
        "repeat its values).",
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing run in --out."),
    seed: int = typer.Option(None, "--seed", help="Random seed (default: config, 0)."),
    val: Path = typer.Option(
        None,
        "--val",
        help="Validate on this annotation file every "
        "--val-every epochs; best.pt = best AP50 (stage 1) / accuracy (stage 2).",
    ),
    val_every: int = typer.Option(None, "--val-every", min=1, help="Epochs between validations (default 1)."),
) -> None:
    """Train a detector + classification head with the paper's two-stage schedule (docs/models.md §2.7).

    Stage 1 trains detection on TBX11K_trainval_only_tb.json; stage 2 loads the stage-1 weights,
    freezes everything but the classification head and trains it on all_trainval.json. Writes
    RUN/config.yaml, provenance.json, metrics.jsonl and RUN/stage{1,2}/{last,final,best}.pt.
    """
    from tbx.engine import distributed as D  # torch: imported only when the command runs
    from tbx.engine.schedule import canonical_model_name, load_train_config

    console = Console()
    if gpus and gpus > 1 and D.env_world_size() <= 1:
        options = {
            "--data": data,
            "--out": out,
            "--stage": stage,
            "--config": config,
            "--device": device,
            "--amp": amp,
            "--seed": seed,
            "--val": val,
            "--val-every": val_every,
        }
        D.relaunch(
            gpus,
            D.command_line(
                "train",
                *([model] if model else []),
                options=options,
                repeated={"--set": list(set_)},
                flags={"--resume": resume, "--force": force},
            ),
            echo=console.print,
        )
        return

    if resume:  # the run's record is the truth (tbx.engine.runs); --config / --set may only repeat it
        from tbx.engine.runs import recorded_config

        recorded = recorded_config(out)
        if config is not None:
            raise TbxError(
                "--resume uses the run's config.yaml; --config cannot change it",
                out,
                "drop --config (or start a new run with it)",
            )
        config = str(out / "config.yaml")
        if model is not None and canonical_model_name(model) != recorded.model_name:
            raise TbxError(
                f"the run is of model '{recorded.model_name}', not '{model}'",
                out,
                f"resume with the run's model ({recorded.model_name}) or train a new run elsewhere",
            )
        model = recorded.model_name
    cfg = load_train_config(model or "symformer", config, list(set_))
    cfg.data.root = str(data)
    if device is not None:
        if device not in ("auto", "cuda", "cpu"):
            raise TbxError(f"bad --device '{device}'", fix="use auto, cuda or cpu")
        cfg.device = device
    if amp is not None:
        if amp not in ("auto", "bf16", "fp16", "off"):
            raise TbxError(f"bad --amp '{amp}'", fix="use bf16, fp16, off or auto")
        cfg.amp = amp
    if seed is not None:
        cfg.seed = seed
    if val is not None:
        cfg.val_ann = str(val)
    if val_every is not None:
        cfg.val_every = val_every

    from tbx.engine.trainer import train as run_training

    is_main = int(os.environ.get("RANK", "0")) == 0
    if is_main:
        console.print(
            f"training [bold]{cfg.model_name}[/] ({cfg.model.backbone}, "
            f"{cfg.model.input_size} px) stage {stage} → {escape(str(out))}"
        )
    result = run_training(cfg, out, stage=stage, resume=resume, force=force)
    if is_main:
        for s, p in sorted(result.final.items()):
            line = f"stage {s}: {p}"
            if s in result.best:
                line += f" (best: {result.best[s]})"
            console.print(line)
        console.print(f"metrics: {result.metrics}")
        if val is not None and 2 in result.final:  # the thresholds of `tbx screen`, on --val
            from tbx.deploy.operating_points import fit_operating_points

            console.print(f"operating points: {fit_operating_points(out, data, val, device=cfg.device)}")
