"""The one error type users see.

Every layer raises :class:`SvEngineError` for bad input it can explain (missing checkpoint, wrong
shape, unknown backend, no GPU ...). The message says what is wrong *and* how to fix it; the CLI
prints it as a single line and exits non-zero instead of showing a traceback.

``field`` names the input at fault in the library's terms (``fg_prompt``, ``keyframes``, ``data``):
the CLI shows it as its flag (``--fg-prompt``), the service and batch as the job's JSON/YAML key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class SvEngineError(Exception):
    """A user-facing error: ``what`` went wrong and the ``fix``; ``field``: the input at fault, if one is."""

    def __init__(self, what: str, fix: str | None = None, *, field: str | None = None) -> None:
        self.what = what
        self.fix = fix
        self.field = field
        super().__init__(what)

    def describe(self, label: str | None = None) -> str:
        """One line: ``label`` (default: the field) prefixed, then what is wrong and the fix."""
        label = label or self.field
        text = f"{label}: {self.what}" if label else self.what
        return f"{text} Fix: {self.fix}" if self.fix else text

    def __str__(self) -> str:
        return self.describe()

    def __reduce__(self):  # pickled across processes (Ray workers) with its fix and field
        return (type(self), (self.what, self.fix), {"field": self.field})


@contextmanager
def about(field: str) -> Iterator[None]:
    """Errors raised inside (that name no input themselves) are about ``field``."""
    try:
        yield
    except SvEngineError as err:
        if err.field is None:
            err.field = field
        raise
