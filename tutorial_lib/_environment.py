"""The one process setting that must be in place before torch is first imported.

``tutorial_lib/__init__.py`` calls :func:`prepare` before it imports anything that imports
torch. It sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it already: OpenMP threads that
busy-wait make torch several times slower when the 2 cores of a laptop or CI machine are
shared with another process.

Nothing else is touched. In particular the package does not choose torch's, oneDNN's or MKL's
instruction set (``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, ``MKL_CBWR``): pinning them
costs speed on newer CPUs and still cannot make trained digits agree across CPUs (libraries
block their work by cache size; ARM CPUs have other kernels altogether). The notebooks do not
need it: strict nbval compares only outputs that are exact on every machine, and cells whose
numbers come from training assert the claims the text makes instead (see ``claims.py``).
"""
from __future__ import annotations

import os

__all__ = ["prepare"]


def prepare() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` as a default (a value the user set is kept)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
