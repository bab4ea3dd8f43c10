"""`tbx predict` — a trained model → the official prediction files (docs/protocol.md §4.1)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def predict(
    run: Path = typer.Argument(
        ..., help="Run directory (uses stage2/final.pt, else stage1) or a .pt checkpoint."
    ),
    data: Path = typer.Option(..., "--data", help="TBX11K-layout dataset root."),
    ann: Path = typer.Option(
        ...,
        "--ann",
        help="COCO annotation file listing the images to "
        "predict (absolute or relative to --data), e.g. "
        "annotations/json/all_test.json.",
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder for cls_result.txt, bbox_result.json, manifest.json."
    ),
    batch: int = typer.Option(8, "--batch", min=1, help="Images per forward pass."),
    amp: str = typer.Option("auto", "--amp", help="bf16 | fp16 | off | auto (bf16 on CUDA)."),
    device: str = typer.Option("auto", "--device", help="auto | cuda | cpu."),
    workers: int = typer.Option(2, "--workers", min=0, help="Image decoding processes."),
) -> None:
    """Predict every image of an annotation file, in its order: cls_result.txt (p healthy, sick,
    TB per line), bbox_result.json (COCO results in original-image pixels), manifest.json."""
    from tbx.engine.predict import predict as run_predict

    out_dir = run_predict(run, data, ann, out, batch_size=batch, device=device, amp=amp, workers=workers)
    Console().print(f"predictions written to {out_dir}")
