"""The `edgecls` command. Each stage registers its own commands; heavy imports happen inside them,
so `edgecls --help` and the device commands never load TensorFlow."""
from __future__ import annotations

import importlib
import os
import sys

from pathlib import Path
from typing import Optional

import typer

from edgecls import __version__
from edgecls.errors import EdgeclsError

app = typer.Typer(
    name="edgecls",
    help="Folder of labelled photos → int8 image classifier, proven against float, running live on a Pi or Jetson.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool):
    if value:
        typer.echo(f"edgecls {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")):
    pass


@app.command("demo")
def _demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for the demo's run, bundle and video."),
    data: Optional[Path] = typer.Option(None, "--data", help="Image folder [default: the sample in demo/]."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="No-top weights .h5 [default: demo/weights/]."),
    quick: bool = typer.Option(False, "--quick", help="Tiny settings (96 px, 4 epochs): a smoke test."),
    seconds: float = typer.Option(5.0, "--seconds", help="Roughly how long the live loop runs."),
):
    """Train → export --int8 → live loop on a replayed camera, offline, on the bundled sample."""
    from edgecls.demo import demo

    demo(out, data, weights, quick, seconds)


def _register() -> None:
    from edgecls.convert import commands as convert_commands
    from edgecls.device import commands as device_commands
    from edgecls.fleet import commands as fleet_commands
    from edgecls.train import commands as train_commands

    for stage in (train_commands, convert_commands, device_commands, fleet_commands):
        stage.register(app)
    importlib.import_module("edgecls.device.teach.command").register(app)   # edgecls teach (issue 33)


_register()


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit; the only way user-facing errors leave the program."""
    first = " ".join(str(message).split("\n")[0].split())
    typer.echo(f"edgecls: error: {first}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point. Usage errors are typer's; EdgeclsError and any unexpected failure become one line."""
    try:
        app(args=argv, prog_name="edgecls")
    except SystemExit as e:
        # typer turns Ctrl-C into a silent exit 130 (Exit(130) raised from the KeyboardInterrupt): say it.
        if e.code == 130 and isinstance(getattr(e.__context__, "__cause__", None), KeyboardInterrupt):
            fail("interrupted", 130)
        raise
    except EdgeclsError as e:
        fail(str(e), e.exit_code)
    except KeyboardInterrupt:   # outside typer's own handling (e.g. while a command is being set up)
        fail("interrupted", 130)
    except Exception as e:
        if os.environ.get("EDGECLS_DEBUG"):
            raise
        fail(f"internal error: {type(e).__name__}: {e} (set EDGECLS_DEBUG=1 for the traceback)", 1)
