"""The ``sv-engine`` command line (typer). Sits on top of every package; nothing imports it.

Each command lives in its own module and registers itself on :data:`app`; heavy libraries
(torch, diffusers, onnxruntime) are imported inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import importlib
import logging
import sys

from sv_engine.cli.app import app
from sv_engine.cli.extras import missing_module_error
from sv_engine.errors import SvEngineError, as_flag
from sv_engine.gc_pause import freeze_before_exit

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
COMMAND_NAMES = {command.name or command.callback.__name__ for command in app.registered_commands}

# typer >= 0.24 parses with its own bundled copy of click (typer._click): its exceptions are not
# click's, so they are caught here by typer's classes (pyproject pins the typer range this is tested on).
from typer._click.exceptions import (  # noqa: E402
    BadParameter,
    ClickException,
    MissingParameter,
    NoArgsIsHelpError,
    NoSuchOption,
    UsageError,
)
from typer.exceptions import Abort, Exit  # noqa: E402


def usage_error_line(err: UsageError) -> str:
    """One line for a usage error: what is wrong, how to fix it, and the command's usage line."""
    what = " ".join(err.format_message().split()).rstrip(".") + "."
    if err.ctx is None:  # raised while parsing, before a context existed (e.g. an option without its value)
        command = " ".join(["sv-engine", *[a for a in sys.argv[1:2] if a in COMMAND_NAMES]])
        return f"{what} Fix: see `{command} --help`."
    command = err.ctx.command_path
    hint = err.param.get_error_hint() if isinstance(err, BadParameter) and err.param is not None else None
    if isinstance(err, MissingParameter) and hint:
        fix = f"add {hint} (see `{command} --help`)."
    elif isinstance(err, BadParameter) and hint:
        fix = f"give {hint} a valid value (see `{command} --help`)."
    elif isinstance(err, NoSuchOption):
        fix = f"use one of the options listed by `{command} --help`."
    else:
        fix = f"see `{command} --help`."
    usage = " ".join(err.ctx.get_usage().split())
    return f"{what} Fix: {fix} {usage}"


def flag_of(field: str) -> str:
    """The CLI's name for a library input (``fg_prompt`` -> ``--fg-prompt``; the data folder is an argument)."""
    return "DATA_DIR" if field == "data" else as_flag(field)


def console_main() -> None:
    """The ``sv-engine`` script and ``python -m sv_engine``: :func:`main`; after a command that finished
    its outputs and asked for it (:data:`~sv_engine.cli.app.END_AT_ONCE`), the process ends right away,
    its streams and logs flushed. (Tests call :func:`main` in their own process: it never ends it.)"""
    from sv_engine.cli.app import END_AT_ONCE

    END_AT_ONCE.clear()
    try:
        main()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if END_AT_ONCE.is_set() and (code is None or isinstance(code, int)):
        import os

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    sys.exit(code)


def main() -> None:
    """Console entry point: runs the typer app, turning bad input into one clear line and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _run()
    finally:
        freeze_before_exit()


def _run() -> None:
    try:
        code = app(standalone_mode=False)  # a command's typer.Exit(n) comes back as n
    except SvEngineError as err:
        log.error("%s", err.describe(flag_of))
        sys.exit(2)
    except NoArgsIsHelpError as err:  # bare `sv-engine`: the help text is what the user asked for
        err.show()
        sys.exit(0)
    except UsageError as err:
        log.error("%s", usage_error_line(err))
        sys.exit(2)
    except ClickException as err:
        log.error("%s", " ".join(err.format_message().split()))
        sys.exit(2)
    except ModuleNotFoundError as err:  # a package imported inside a command
        log.error("%s", missing_module_error(err))
        sys.exit(2)
    except Exit as err:
        sys.exit(err.exit_code)
    except (KeyboardInterrupt, Abort):
        log.error("interrupted")
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)
