"""The typer application object that every command module registers on, and how the process ends."""

import threading

import typer

app = typer.Typer(
    name="sv-engine",
    help="Optimized inference engine for StableVideo: text-driven, temporally consistent video editing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


#: Set by a command whose outputs are all written and closed (``edit``): the ``sv-engine`` script then
#: ends the process at once (:func:`sv_engine.cli.console_main`), without the interpreter's teardown or
#: the CUDA context's destruction, which a cold edit's process spent 0.4-0.6 s on after its video was
#: written (benchmarks/results/cold-start-*: "outside the report's phases").
END_AT_ONCE = threading.Event()
