"""Exercises and their checkers, one module per notebook (``nb00``, ``nb01``, ...)."""
from __future__ import annotations

import importlib
import pkgutil

from .core import Exercise, check, exercise, list_exercises, passes, verdict

__all__ = ["Exercise", "check", "exercise", "list_exercises", "passes", "verdict"]

# Every module named nbNN registers the exercises of notebook NN when imported.
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("nb"):
        importlib.import_module(f"{__name__}.{_info.name}")
