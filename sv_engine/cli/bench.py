"""``sv-engine bench``: per-stage and end-to-end latency on every backend (table + JSON).

The options are declared once, on :class:`sv_engine.benchmarks.options.BenchOptions` (flag, default,
help); this command's signature is built from them.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from sv_engine.benchmarks.options import option_fields
from sv_engine.cli.app import app


def bench(**options: Any) -> None:
    """Benchmark every pipeline stage on every backend (speed-ups vs StableVideo's way) and optionally a
    whole edit."""
    from sv_engine.benchmarks.bench import BenchOptions, print_report, run_bench

    result = run_bench(BenchOptions(**options))
    print_report(result)
    if options["json_path"]:
        typer.echo(f"wrote {options['json_path']}")
    if result.get("saved_to"):
        typer.echo(f"wrote {result['saved_to']}")


bench.__signature__ = inspect.Signature(
    [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default,
            annotation=Annotated[kind | None if default is None else kind, typer.Option(flag, help=help_text)],
        )
        for name, kind, default, flag, help_text in option_fields()
    ]
)
app.command("bench")(bench)
