"""`tbx models` commands: list the registry, show parameters/MACs/latency of a model."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Model registry: list models, show their size and cost.", no_args_is_help=True)


@app.command("list")
def list_models() -> None:
    """List the models `tbx train --model NAME` can build."""
    from tbx.models.registry import DEFAULT_MODEL, MODELS, describe

    table = Table(title="tbx models")
    table.add_column("name")
    table.add_column("description")
    for name in MODELS:
        table.add_row(name + (" (default)" if name == DEFAULT_MODEL else ""), describe(name))
    Console().print(table)


@app.command("info")
def info(
    name: str = typer.Argument(
        "symformer_retinanet",
        help="Model name (see `tbx models list`) or a "
        "training preset (e.g. symformer_retinanet_p2t) / YAML file.",
    ),
    input_size: int = typer.Option(
        512, "--input", min=32, help="Square input side in pixels for MACs/latency."
    ),
    backbone: str = typer.Option(
        None,
        "--backbone",
        help="resnet18 | resnet34 | resnet50 | resnet101 | p2t_small (default: the preset's).",
    ),
    pos_encoding: str = typer.Option(
        None, "--pos-encoding", help="none | sine | relative | spe_no_stn | spe | spe_left_to_right."
    ),
    attention: str = typer.Option(None, "--attention", help="symmetric | deformable."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        help="Override a config key, e.g. --set "
        "model.pretrained=FILE (loads the weights and reports what "
        "loaded; default: random weights).",
    ),
    runs: int = typer.Option(3, "--runs", min=0, help="Timed CPU runs for the latency median (0: skip)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Parameters (live and paper accounting), MACs at --input and CPU latency of a model."""
    from tbx.engine.schedule import MODEL_ALIASES, load_train_config
    from tbx.errors import TbxError
    from tbx.models.info import model_info
    from tbx.models.registry import MODELS

    flags = (
        ("backbone", backbone),
        ("symformer.pos_encoding", pos_encoding),
        ("symformer.attention", attention),
    )
    overrides = [f"model.{k}={v}" for k, v in flags if v is not None]
    overrides += [*set_, f"model.input_size={input_size}"]
    is_model = name in MODELS or name in MODEL_ALIASES
    try:
        tcfg = load_train_config(name if is_model else None, None if is_model else name, overrides)
    except TbxError as e:
        if is_model or name.endswith((".yaml", ".yml")):
            raise
        raise TbxError(
            f"unknown model or preset {name!r}",
            fix=f"use one of {sorted(MODELS)} (see `tbx models list`) or a preset",
        ) from e
    load_weights = any(s.split("=", 1)[0].strip() == "model.pretrained" for s in set_)
    res = model_info(tcfg.model_name, tcfg.model, input_size, latency_runs=runs, load_weights=load_weights)
    if as_json:
        typer.echo(json.dumps(res, indent=2))
        return
    table = Table(title=f"{res['model']} ({res['backbone']}, {input_size}×{input_size})")
    for col in ("component", "params", "GMACs"):
        table.add_column(col, justify="left" if col == "component" else "right")
    for cname, c in res["components"].items():
        table.add_row(cname, f"{c['params']:,}", f"{c['gmacs']:.2f}")
    table.add_row("[bold]total (live)[/]", f"[bold]{res['params_live']:,}[/]", f"[bold]{res['gmacs']:.2f}[/]")
    con = Console()
    con.print(table)
    con.print(
        f"trainable params: {res['params_trainable']:,}; paper accounting "
        f"(trainable + {res['dead_params']:,} dead): {res['params_paper']:,}"
    )
    con.print(
        f"GMACs counted as mmcv does (the paper's figures): {res['gmacs']:.2f}; it does not see "
        f"attention products / sampling / functional pooling ({res['gmacs_functional']:.3f} G), "
        f"Hardswish-like activations ({res['gmacs_activations']:.3f} G) or post-processing; "
        f"full count: {res['gmacs_full']:.2f}"
    )
    if res["pretrained"] is not None:
        p = res["pretrained"]
        con.print(
            f"backbone weights {tcfg.model.pretrained}: {p['loaded']} tensors loaded, "
            f"{p['missing']} missing, {p['unexpected']} unexpected (ignored)"
        )
    if res["latency_ms"] is not None:
        con.print(f"CPU latency (median of {runs}, batch 1): {res['latency_ms']:.0f} ms")
