"""The ``medrae`` command line: a thin Typer app over the library.

Training and export need the ``train`` extra (PyTorch); they forward their options unchanged to
``models.train``, ``models.train_generator`` and ``export.onnx_export`` (``--help`` lists them).
"""
from __future__ import annotations

from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Reversible adversarial protection of medical images.")
PASS = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _forward(main, args: List[str]) -> None:
    try:
        rc = main(args)
    except ModuleNotFoundError as exc:
        typer.echo(f"error: {exc.name} is not installed; install the training extra: pip install -e '.[train]'", err=True)
        raise typer.Exit(2)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(rc or 0)


@app.command(context_settings=PASS)
def train(ctx: typer.Context, task: str = typer.Argument(..., help="segmenter | classifier | generator")) -> None:
    """Train a model (options: medrae train TASK --help)."""
    if task in ("segmenter", "classifier"):
        from models.train import main

        _forward(main, [task, *ctx.args])
    elif task == "generator":
        from models.train_generator import main

        _forward(main, list(ctx.args))
    else:
        typer.echo(f"error: unknown task {task!r}; choose segmenter, classifier or generator", err=True)
        raise typer.Exit(2)


@app.command(context_settings=PASS)
def export(ctx: typer.Context) -> None:
    """Export a checkpoint to ONNX with parity checks and a model card (options: --help)."""
    from export.onnx_export import main

    _forward(main, list(ctx.args))


@app.command("evaluate-models", context_settings=PASS)
def evaluate_models(ctx: typer.Context) -> None:
    """Measure the shipped ONNX models on a dataset directory (options: --help)."""
    from toolkit.evaluate_models import main

    _forward(main, list(ctx.args))


@app.command()
def demo(outdir: Optional[str] = typer.Argument(None, help="where to write the phantom PNGs")) -> None:
    """Protect → restore → verify on generated phantoms."""
    from toolkit.demo import main

    raise typer.Exit(main([outdir] if outdir else []))


if __name__ == "__main__":
    app()
