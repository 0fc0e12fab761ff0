"""The one error type users see.

Every layer raises :class:`SvEngineError` for bad input it can explain (missing checkpoint, wrong
shape, unknown backend, no GPU ...). The message says what is wrong *and* how to fix it; the CLI
prints it as a single line and exits non-zero instead of showing a traceback.
"""


class SvEngineError(Exception):
    """A user-facing error: ``what`` went wrong and the ``fix``."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(f"{what} Fix: {fix}" if fix else what)
