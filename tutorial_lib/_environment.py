"""Process settings that must be in place before torch is first imported.

``tutorial_lib/__init__.py`` calls :func:`prepare` before it imports anything that imports
torch. Every setting is a default: a variable the user already set is left alone.

* ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that busy-wait make torch several times slower
  when the 2 cores of a laptop or CI machine are shared with another process.
* One instruction set for every x86-64 CPU that has AVX2. The last bits of a float result
  depend on the SIMD width of the kernels that computed it (a sum over 16 lanes is added in
  another order than a sum over 8), and a few hundred training steps amplify a last-bit
  difference into a different third decimal of an accuracy. The committed notebooks print
  such numbers and strict nbval compares them, so the course asks every library torch uses
  for its AVX2 kernels, also on CPUs that have AVX-512: ATen's own kernels
  (``ATEN_CPU_CAPABILITY``), oneDNN's convolutions (``ONEDNN_MAX_CPU_ISA``) and MKL's matrix
  products (``MKL_CBWR``, MKL's conditional numerical reproducibility). On an AVX-512 CPU
  this costs some speed; set ``ATEN_CPU_CAPABILITY`` (or all three) yourself to choose.
  CPUs without AVX2 (and ARM CPUs) keep their own kernels: their printed digits may differ
  from the stored outputs.
"""
from __future__ import annotations

import os
import platform
import sys

__all__ = ["prepare", "has_avx2"]

ISA_SETTINGS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
}


def has_avx2() -> bool:
    """True on an x86-64 Linux CPU that reports both AVX2 and FMA (what torch's AVX2 kernels use)."""
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return {"avx2", "fma"} <= flags
    except OSError:
        return False
    return False


def prepare() -> None:
    """Set the process-wide defaults described in the module docstring."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:  # too late to choose kernels: torch has decided already
        return
    if has_avx2():
        for name, value in ISA_SETTINGS.items():
            os.environ.setdefault(name, value)
