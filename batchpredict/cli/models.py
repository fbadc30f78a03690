"""`batchpredict models list|pull`: the model registry."""

from __future__ import annotations

import time

import click
import orjson
from rich.table import Table

from batchpredict.backends.registry import ModelRegistry
from batchpredict.cli.common import err, out
from batchpredict.config import Settings

__all__ = ["models"]


@click.group()
def models() -> None:
    """The model registry."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
def models_list(as_json: bool) -> None:
    """Models a job may name, and the backend that answers each."""
    entries = ModelRegistry.from_settings(Settings.from_env()).describe()
    if as_json:
        click.echo(orjson.dumps(entries, option=orjson.OPT_INDENT_2))
        return
    table = Table()
    table.add_column("model", overflow="fold")
    for col in ("backend", "settings", "description"):
        table.add_column(col, overflow="fold")
    for e in entries:
        name = f"{e['name']} (any name it matches)" if e["pattern"] else e["name"]
        table.add_row(name, e["backend"], e.get("settings", ""), e["description"])
    out.print(table)


@models.command("pull")
def models_pull() -> None:
    """Prepare the embedded model: convert the bundled GGUF once into a fast-loading folder, and
    build from it the int4 ONNX model that the default engine runs."""
    from batchpredict.backends.embedded_model import prepare_embedded_model, prepare_onnx_model

    started = time.monotonic()
    with err.status("Preparing the embedded model (about a minute the first time)..."):
        path = prepare_embedded_model()
    out.print(f"Embedded model ready in {path} ({time.monotonic() - started:.1f} s)")
    started = time.monotonic()
    with err.status("Building its ONNX model for the default engine (about 30 s the first "
                    "time)..."):
        onnx = prepare_onnx_model()
    out.print(f"ONNX model ready in {onnx} ({time.monotonic() - started:.1f} s)")
