"""`tbx models` commands: list the registry, show parameters/MACs/latency of a model."""

from __future__ import annotations

import json
import typing

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Model registry: list models, show their size and cost.", no_args_is_help=True)


@app.command("list")
def list_models() -> None:
    """List the models `tbx train --model NAME` can build."""
    from tbx.models.registry import DEFAULT_MODEL, MODELS, UNAVAILABLE, describe

    table = Table(title="tbx models")
    table.add_column("name")
    table.add_column("description")
    for name in MODELS:
        table.add_row(name + (" (default)" if name == DEFAULT_MODEL else ""), describe(name))
    for name, err in UNAVAILABLE.items():
        table.add_row(f"[dim]{name}[/]", f"[red]unavailable: {err}[/]")
    Console().print(table)


@app.command("info")
def info(
    name: str = typer.Argument("symformer_retinanet", help="Model name (see `tbx models list`)."),
    input_size: int = typer.Option(512, "--input", min=32,
                                    help="Square input side in pixels for MACs/latency."),
    backbone: str = typer.Option("resnet50", "--backbone",
                                 help="resnet18 | resnet34 | resnet50 | resnet101."),
    pos_encoding: str = typer.Option("spe", "--pos-encoding",
                                     help="none | sine | relative | spe_no_stn | spe | spe_left_to_right."),
    attention: str = typer.Option("symmetric", "--attention", help="symmetric | deformable."),
    runs: int = typer.Option(3, "--runs", min=0, help="Timed CPU runs for the latency median (0: skip)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Parameters (live and paper accounting), MACs at --input and CPU latency of a model."""
    from tbx.config import _coerce
    from tbx.models.info import model_info
    from tbx.models.registry import ModelConfig

    hints = typing.get_type_hints(ModelConfig)  # validates the Literal choices → TbxError
    cfg = ModelConfig(backbone=backbone, pretrained="none", input_size=input_size,
                      pos_encoding=_coerce(hints["pos_encoding"], pos_encoding, "--pos-encoding"),
                      attention=_coerce(hints["attention"], attention, "--attention"))
    res = model_info(name, cfg, input_size, latency_runs=runs)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    table = Table(title=f"{name} ({backbone}, {input_size}×{input_size})")
    for col in ("component", "params", "GMACs"):
        table.add_column(col, justify="left" if col == "component" else "right")
    for cname, c in res["components"].items():
        table.add_row(cname, f"{c['params']:,}", f"{c['gmacs']:.2f}")
    table.add_row("[bold]total (live)[/]", f"[bold]{res['params_live']:,}[/]", f"[bold]{res['gmacs']:.2f}[/]")
    con = Console()
    con.print(table)
    con.print(f"trainable params: {res['params_trainable']:,}; paper accounting "
              f"(trainable + {res['dead_params']:,} dead): {res['params_paper']:,}")
    con.print(f"not counted in GMACs (mmcv-style): grid_sample/attention products "
              f"{res['gmacs_functional']:.3f} G, post-processing")
    if res["latency_ms"] is not None:
        con.print(f"CPU latency (median of {runs}, batch 1): {res['latency_ms']:.0f} ms")
