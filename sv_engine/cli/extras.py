"""Optional extras (pyproject.toml [project.optional-dependencies]): a missing one is one line naming its install."""

from __future__ import annotations

import importlib

from sv_engine.errors import SvEngineError

# Import names of each extra's packages.
EXTRA_MODULES = {"serve": ("ray", "fastapi", "uvicorn", "httpx", "yaml")}
EXTRA_OF_MODULE = {module: extra for extra, modules in EXTRA_MODULES.items() for module in modules}


def missing_module_error(err: ModuleNotFoundError) -> SvEngineError:
    """The install that provides a missing package: its optional extra, or sv-engine's own dependencies."""
    top = (err.name or str(err)).split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra:
        return SvEngineError(f"The Python package {top!r} is not installed.", f"pip install 'sv-engine[{extra}]'.")
    return SvEngineError(
        f"The Python package {top!r} is not installed.",
        "reinstall sv-engine with its dependencies (`make setup`, or `pip install -e .` in the repository).",
    )


def require_extra(extra: str) -> None:
    """Imports the extra's packages now, so a missing one is reported before any work starts."""
    for module in EXTRA_MODULES[extra]:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            raise missing_module_error(err) from None
