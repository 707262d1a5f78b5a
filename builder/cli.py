"""The ``dreambuild`` command line."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="dreambuild: train Stable Diffusion with DreamBooth and ship it as a Cog model image.", no_args_is_help=True)


@app.callback()
def main() -> None:
    """dreambuild command line."""


@app.command()
def demo(out: Path = typer.Option(Path("demo-out"), help="Directory for summary.json, output.zip and the generated PNG.")) -> None:
    """Run the pipeline end to end on tiny local models, with no configuration."""
    from builder.demo import run_demo

    run_demo(out)
