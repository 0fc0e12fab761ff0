"""The one error type users see.

Every layer raises :class:`SvEngineError` for bad input it can explain (missing checkpoint, wrong
shape, unknown backend, no GPU ...). The message says what is wrong *and* how to fix it; the CLI
prints it as a single line and exits non-zero instead of showing a traceback.

``field`` names the input at fault in the library's terms (``fg_prompt``, ``keyframes``, ``data``):
the CLI shows it as its flag (``--fg-prompt``), the service and batch as the job's JSON/YAML key.
The texts name other inputs the same way, as ``$name`` placeholders listed in ``mentions`` (the field
itself needs no listing): ``"pass $force to overwrite it"`` reads ``pass --force ...`` on the command
line and ``pass force ...`` in the service. The library never spells a front end's names itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from string import Template

#: How a front end spells an input: the CLI's flag, the service's JSON key (the default: the field).
Spelling = Callable[[str], str]


def _as_field(field: str) -> str:
    return field


def as_flag(field: str) -> str:
    """An input's command-line spelling (``fg_prompt`` -> ``--fg-prompt``): the CLI's, and its scripts'."""
    return "--" + field.replace("_", "-")


class SvEngineError(Exception):
    """A user-facing error: ``what`` went wrong and the ``fix``; ``field``: the input at fault, if one is;
    ``mentions``: the other inputs the texts name as ``$name``."""

    def __init__(
        self, what: str, fix: str | None = None, *, field: str | None = None, mentions: tuple[str, ...] = ()
    ) -> None:
        self.what = what
        self.fix = fix
        self.field = field
        self.mentions = tuple(mentions)
        super().__init__(what)

    def texts(self, spell: Spelling = _as_field) -> tuple[str, str | None]:
        """``(what, fix)`` with the inputs they name spelled by ``spell``."""
        names = {name: spell(name) for name in (*self.mentions, *([self.field] if self.field else []))}

        def render(text: str) -> str:
            return Template(text).safe_substitute(names) if names else text

        return render(self.what), None if self.fix is None else render(self.fix)

    def describe(self, spell: Spelling = _as_field) -> str:
        """One line: the field (as ``spell`` spells it), what is wrong and the fix."""
        what, fix = self.texts(spell)
        text = f"{spell(self.field)}: {what}" if self.field else what
        return f"{text} Fix: {fix}" if fix else text

    def __str__(self) -> str:
        return self.describe()

    def __reduce__(self):  # pickled across processes (Ray workers) with its fix, field and mentions
        return (type(self), (self.what, self.fix), {"field": self.field, "mentions": self.mentions})


@contextmanager
def about(field: str) -> Iterator[None]:
    """Errors raised inside (that name no input themselves) are about ``field``."""
    try:
        yield
    except SvEngineError as err:
        if err.field is None:
            err.field = field
        raise
