"""The typer application object that every command module registers on."""

import typer

app = typer.Typer(
    name="sv-engine",
    help="Optimized inference engine for StableVideo: text-driven, temporally consistent video editing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
