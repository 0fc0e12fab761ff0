"""Importing a test's third-party dependency: skipped when missing on a developer's machine, an error in CI.

CI (``CI=true``, set by .ci/run) installs every dependency (`make setup`), so a missing one there is a
missing install step: the run must fail, not quietly skip whole test modules.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def import_or_skip(name: str) -> ModuleType:
    """``pytest.importorskip(name)``, except under ``CI=true``, where a missing module fails the run."""
    if not in_ci():
        return pytest.importorskip(name)
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(
            f"{name} is not installed, and CI=true: CI installs every dependency (make setup), so this is a "
            f"missing install step ({err})."
        ) from err
