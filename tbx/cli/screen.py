"""`tbx screen` — a trained model over any folder of chest X-rays (DICOM / PNG / JPEG / TIFF)."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from tbx.errors import TbxError


def screen(
    model: Path = typer.Argument(..., help="Run directory, .pt checkpoint, or .onnx file of `tbx export`."),
    inputs: list[str] = typer.Argument(
        ..., help="Files, folders (recursive), globs or @list.txt; DICOM is recognised by content."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (rerunning the same command resumes)."),
    threshold: str = typer.Option(
        None,
        "--threshold",
        help="p(TB) threshold: a probability, sens90, "
        "spec70 (from RUN/operating_points.json) or argmax (the paper's "
        "rule). Default: sens90 when the run has it, else argmax.",
    ),
    all_boxes: bool = typer.Option(
        False, "--all-boxes", help="Report boxes on every image, not only on those decided TB."
    ),
    overlays: bool = typer.Option(
        True, "--overlays/--no-overlays", help="Write overlays/ID.png (image, boxes, p(TB), decision)."
    ),
    heatmaps: bool = typer.Option(
        False,
        "--heatmaps",
        help="Also write heatmaps/ID.png: where the model looks (tbx explain; torch models).",
    ),
    heatmap_method: str = typer.Option(
        "gradcam", "--heatmap-method", help="A `tbx explain` method for --heatmaps."
    ),
    anonymize: bool = typer.Option(
        False, "--anonymize", help="Replace each source path by a salted hash in every output."
    ),
    salt: str = typer.Option(None, "--salt", help="Secret for the --anonymize HMAC (never written)."),
    mapping: Path = typer.Option(
        None, "--mapping", help="With --anonymize: write the CSV path → hash here (must lie outside --out)."
    ),
    batch: int = typer.Option(8, "--batch", help="Images per forward pass."),
    workers: int = typer.Option(2, "--workers", help="Decoding processes."),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cpu (torch backend)."),
    amp: str = typer.Option("auto", "--amp", help="bf16 | fp16 | off | auto (bf16 on CUDA)."),
    threads: int = typer.Option(None, "--threads", help="CPU threads for inference."),
    gpus: int = typer.Option(
        0,
        "--gpus",
        help="Launch N processes with torchrun (each screens a "
        "shard; rank 0 merges). Several machines: torchrun … -m tbx screen …",
    ),
) -> None:
    """Screen new patients: predictions.csv (p healthy / sick / TB, decision at the operating point),
    detections.json (boxes in original pixels), overlays/, errors.csv, manifest.json. No DICOM
    header value reaches any output; --anonymize hashes the paths too."""
    from tbx.engine import distributed as D

    if gpus and gpus > 1 and D.env_world_size() <= 1:
        options = {
            "--out": out,
            "--batch": batch,
            "--workers": workers,
            "--device": device,
            "--amp": amp,
            "--threshold": threshold,
            "--salt": salt,
            "--mapping": mapping,
            "--threads": threads,
            "--heatmap-method": heatmap_method,
        }
        flags = {
            "--all-boxes": all_boxes,
            "--no-overlays": not overlays,
            "--heatmaps": heatmaps,
            "--anonymize": anonymize,
        }
        D.relaunch(
            gpus,
            D.command_line("screen", str(model), *inputs, options=options, flags=flags),
            echo=Console().print,
        )
        return
    if mapping is not None and not anonymize:
        raise TbxError("--mapping without --anonymize", fix="add --anonymize (or drop --mapping)")
    if threads:
        import torch

        torch.set_num_threads(threads)
    from tbx.deploy.screen import ScreenConfig
    from tbx.deploy.screen import screen as run_screen

    cfg = ScreenConfig(
        threshold=threshold,
        batch_size=batch,
        workers=workers,
        device=device,
        amp=amp,
        threads=threads,
        all_boxes=all_boxes,
        overlays=overlays,
        heatmaps=heatmap_method if heatmaps else None,
        anonymize=anonymize,
        salt=salt,
        mapping=str(mapping) if mapping else None,
    )
    res = run_screen(model, list(inputs), out, cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        thr = res.threshold
        Console().print(
            f"screened {res.n_screened} of {res.n_inputs} inputs ({res.n_resumed} from an "
            f"earlier run, {res.n_errors} unreadable → {res.files.get('errors')}); "
            f"{res.n_tb} decided TB at {thr.column} ({thr.origin}); backend {res.backend} "
            f"→ {res.out}"
        )
