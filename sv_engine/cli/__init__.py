"""The ``sv-engine`` command line (typer). Sits on top of every package; nothing imports it.

Each command lives in its own module and registers itself on :data:`app`; heavy libraries
(torch, diffusers, onnxruntime) are imported inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import importlib
import logging
import sys

from sv_engine.cli.app import app
from sv_engine.errors import SvEngineError

# Command modules, in the order they appear in --help.
COMMAND_MODULES = [
    "demo",
    "edit",
    "info",
    "atlas",
    "render",
    "fit",
    "export_cmd",
    "build_cmd",
    "parity_cmd",
    "bench",
    "serve",
    "batch",
]

for _name in COMMAND_MODULES:
    importlib.import_module(f"sv_engine.cli.{_name}")

log = logging.getLogger("sv_engine")


def main() -> None:
    """Console entry point: runs the typer app, turning :class:`SvEngineError` into one clear line."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=False)
    except SvEngineError as err:
        log.error("%s", err)
        sys.exit(2)
    except KeyboardInterrupt:
        log.error("interrupted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as err:  # typer/click usage errors carry their own exit codes
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Exit):
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(1)
        raise
