"""Library errors say what is wrong; the front ends spell the inputs (checked on the source).

The library (everything but the CLI and the service) names the input at fault as ``field`` and the
other inputs its texts mention as ``$name`` placeholders (``mentions``): the CLI renders them as its
flags, the service as its JSON keys. So no raised error or log message of the library spells a flag
(``--out``), except inside a whole command it quotes in backticks (```sv-engine export --force```:
another command to run); every ``$name`` a text uses is declared; every input named is a real flag.
"""

from __future__ import annotations

import ast
import logging
import re
import sys
from pathlib import Path

import pytest

from sv_engine.errors import SvEngineError, about

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("benchmarks", "engine", "export", "kernels", "stablevideo")
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical"}
FLAG = re.compile(r"(?<![\w-])--[a-zA-Z][\w-]*")
QUOTED_COMMAND = re.compile(r"`(?:sv-engine|python -m) [^`]*`")
PLACEHOLDER = re.compile(r"\$([a-z_][a-z0-9_]*)")
#: Inputs of the library's own argparse scripts, which the ``sv-engine`` CLI does not have.
SCRIPT_ONLY = {"readme"}


def library_files() -> list[Path]:
    files = [p for folder in LIBRARY for p in sorted((ROOT / folder).rglob("*.py"))]
    return files + sorted((ROOT / "sv_engine").glob("*.py"))  # the shared utilities (errors, device, ...)


def _text(node: ast.expr) -> str | None:
    """A string literal's text; an f-string's with ``{}`` for its values; None for anything else."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _texts(node: ast.AST) -> list[tuple[int, str]]:
    """``(line, text)`` of the string literals in ``node`` (an f-string's parts count as one text)."""
    parts = {id(v) for j in ast.walk(node) if isinstance(j, ast.JoinedStr) for v in j.values}
    texts = [(sub.lineno, _text(sub)) for sub in ast.walk(node) if isinstance(sub, ast.expr) and id(sub) not in parts]
    return [(line, text) for line, text in texts if text is not None]


def _constants(tree: ast.Module) -> dict[str, ast.expr]:
    """The module's ``NAME = <literal>`` assignments (texts a message may take by name)."""
    return {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }


def _message_texts(node: ast.AST, constants: dict[str, ast.expr]) -> list[tuple[int, str]]:
    """The texts in ``node``, and in the module constants it names (``raise SvEngineError(*NOTHING_MOVES)``)."""
    named = [constants[n.id] for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in constants]
    return [t for part in (node, *named) for t in _texts(part)]


def _messages(tree: ast.Module) -> list[tuple[int, str]]:
    """The texts of every raised exception and every log call."""
    constants = _constants(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and node.exc is not None:
            out += _message_texts(node.exc, constants)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOG_METHODS:
            out += _message_texts(node, constants)
    return out


def flags_in(source: str, name: str = "<source>") -> list[str]:
    """``line: flag`` for each flag a raised error or a log message spells outside a quoted command."""
    return [
        f"{name}:{line}: {flag}"
        for line, text in _messages(ast.parse(source, filename=name))
        for flag in FLAG.findall(QUOTED_COMMAND.sub("", text))
    ]


def _error_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "SvEngineError"
    ]


def _declared(call: ast.Call) -> set[str] | None:
    """``field`` and ``mentions`` of a SvEngineError(...) call; None where they are not literals."""
    names: set[str] = set()
    for kw in call.keywords:
        if kw.arg == "field":
            if not (isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str)):
                return None
            names.add(kw.value.value)
        elif kw.arg == "mentions":
            if not isinstance(kw.value, ast.Tuple) or not all(isinstance(e, ast.Constant) for e in kw.value.elts):
                return None
            names.update(e.value for e in kw.value.elts)
    return names


def undeclared_placeholders(source: str, name: str = "<source>") -> list[str]:
    """``$name`` in an error's texts that its ``field`` / ``mentions`` do not declare (it would print as is)."""
    tree = ast.parse(source, filename=name)
    constants = _constants(tree)
    bad = []
    for call in _error_calls(tree):
        declared = _declared(call)
        if declared is None:
            continue
        for line, text in _message_texts(call, constants):
            bad += [f"{name}:{line}: ${p}" for p in PLACEHOLDER.findall(text) if p not in declared]
    return bad


def named_inputs(source: str) -> set[str]:
    """The literal ``field`` / ``mentions`` / ``about(...)`` names of a module."""
    tree = ast.parse(source)
    names = set()
    for call in _error_calls(tree):
        names |= _declared(call) or set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "about" and node.args:
            if isinstance(node.args[0], ast.Constant):
                names.add(node.args[0].value)
    return names


def test_library_messages_spell_no_flag() -> None:
    bad = []
    for path in library_files():
        name = str(path.relative_to(ROOT))
        bad += flags_in(path.read_text(), name)
    assert bad == [], "name the input with field= / $name (the CLI spells its flag):\n" + "\n".join(bad)


def test_placeholders_are_declared() -> None:
    bad = [v for p in library_files() for v in undeclared_placeholders(p.read_text(), str(p.relative_to(ROOT)))]
    assert bad == [], "list these in field= or mentions=:\n" + "\n".join(bad)


def test_named_inputs_are_cli_flags() -> None:
    """Each input the library names is a flag of some ``sv-engine`` command, as ``flag_of`` spells it."""
    import typer.main

    from sv_engine.cli import app, flag_of

    group = typer.main.get_command(app)
    flags = {
        opt
        for command in group.commands.values()
        for param in command.params
        for opt in (*param.opts, *param.secondary_opts)
    } | {"DATA_DIR"}
    named = {n for p in library_files() for n in named_inputs(p.read_text())} - SCRIPT_ONLY
    assert named, "found no named inputs: the scan is broken"
    assert sorted(n for n in named if flag_of(n) not in flags) == []


@pytest.mark.parametrize(
    "source, expected",
    [
        ('raise SvEngineError("Bad size.", "use --size 768x432.")', ["<source>:1: --size"]),
        ('raise SvEngineError(f"Bad {x} for --fg-box.")', ["<source>:1: --fg-box"]),
        ('log.warning("pass --tiny for a smoke test")', ["<source>:1: --tiny"]),
        ('raise ValueError("x", "run `sv-engine export --force` first")', []),
        ('raise SvEngineError("x", f"run `sv-engine build {d} --backend trt`, or pass --out")', ["<source>:1: --out"]),
        ('raise SvEngineError("a -- b", "sizes 8--16", field="size")', []),
        ('help = "--size 768x432"', []),  # not a message: option declarations may spell flags
        ('FIX = ("Bad.", "pass --mask")\nraise SvEngineError(*FIX)', ["<source>:1: --mask"]),
        ('NOTE = "give --fg-box"\nlog.warning("%s", NOTE)', ["<source>:1: --fg-box"]),
    ],
)
def test_the_checker_finds_flags(source: str, expected: list[str]) -> None:
    assert flags_in(source) == expected


def test_the_checker_finds_undeclared_placeholders() -> None:
    source = 'raise SvEngineError("x", "pass $force or $resume", field="out", mentions=("force",))'
    assert undeclared_placeholders(source) == ["<source>:1: $resume"]


def test_fronts_spell_the_inputs() -> None:
    """The CLI renders field and mentions as flags, the service (the default) as the inputs' own names;
    a ``$`` that is no declared input (a path, a prompt) is left as it is."""
    from sv_engine.cli import flag_of

    err = SvEngineError(
        "Output $HOME/o.mp4 exists.", "choose another or pass $force.", field="out", mentions=("force",)
    )
    assert err.describe(flag_of) == "--out: Output $HOME/o.mp4 exists. Fix: choose another or pass --force."
    assert str(err) == "out: Output $HOME/o.mp4 exists. Fix: choose another or pass force."
    assert err.texts() == ("Output $HOME/o.mp4 exists.", "choose another or pass force.")
    with pytest.raises(SvEngineError) as caught, about("steps"):
        raise SvEngineError("Too few.", "use $steps 1 or more.")
    assert caught.value.describe(flag_of) == "--steps: Too few. Fix: use --steps 1 or more."


def test_errors_pickle_with_their_inputs() -> None:
    import pickle

    err = pickle.loads(pickle.dumps(SvEngineError("w $tiny", "f", field="weights", mentions=("tiny",))))
    assert (err.field, err.mentions, str(err)) == ("weights", ("tiny",), "weights: w tiny Fix: f")


def test_cli_prints_the_flag(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """End to end: a library error (an existing output) comes out of the CLI with the flags spelled."""
    from sv_engine.cli import main

    out = tmp_path / "maps.npz"
    out.write_bytes(b"keep")
    monkeypatch.setattr(sys, "argv", ["sv-engine", "info", str(tmp_path), "--export-maps", str(out)])
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2 and out.read_bytes() == b"keep"
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith("--export-maps: Output ") and "pass --force to overwrite it" in line, line
