"""What a module costs: parameters, FLOPs, latency, peak memory.

* ``count_parameters`` is exact.
* ``count_flops`` uses torch's own ``torch.utils.flop_counter.FlopCounterMode``: it counts
  matrix products and convolutions as 2 FLOPs per multiply-add, and ignores element-wise work
  (activations, softmax, pooling, BN). It is exact and machine-independent, so it can be
  printed as stable text. ``scaled_dot_product_attention`` is counted on every device: torch's
  table covers the GPU kernels, and this module adds the same formula for the CPU kernel,
  which the table lacks (without it, attention on a CPU would count as free).
* ``measure_latency`` and ``peak_memory`` vary from run to run and machine to machine: print
  them only in cells whose output nbval ignores, or in benchmark scripts.

``peak_memory`` measures real memory. On CUDA it uses the allocator's peak counter. On Linux
it resets the process's resident-set high-water mark (``/proc/self/clear_refs``), returns
freed heap pages to the system (``malloc_trim``) and reads how far the resident set rose while
the function ran, so it includes workspaces allocated inside kernels. Elsewhere it returns None.
"""
from __future__ import annotations

import ctypes
import gc
import re
import statistics
import sys
import time
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

try:  # the formulas torch uses for its GPU attention kernels, applied to the CPU kernel too
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count
except ImportError:  # pragma: no cover - an older torch: count what torch counts
    sdpa_flop_count = sdpa_backward_flop_count = None

__all__ = ["count_parameters", "count_flops", "measure_latency", "peak_memory", "format_bytes",
           "format_count"]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _extra_flop_formulas() -> dict:
    aten = torch.ops.aten
    if sdpa_flop_count is None or not hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        return {}

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    return {aten._scaled_dot_product_flash_attention_for_cpu: forward,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def count_flops(fn: Callable[..., Any] | nn.Module, *args: Any, backward: bool = False, **kwargs: Any) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)`` (a module or any function) as torch counts them.

    With ``backward=True`` the backward pass of ``output.sum()`` is counted too.
    """
    with FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas()) as counter:
        if backward:
            out = fn(*args, **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            out.sum().backward()
        else:
            with torch.no_grad():
                fn(*args, **kwargs)
    return int(counter.get_total_flops())


def _sync(args: tuple) -> None:
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_cuda:
            torch.cuda.synchronize(a.device)
            return


def measure_latency(fn: Callable[..., Any], *args: Any, repeats: int = 10, warmup: int = 2,
                    **kwargs: Any) -> float:
    """Median wall-clock seconds of ``fn(*args, **kwargs)`` over ``repeats`` calls."""
    for _ in range(warmup):
        fn(*args, **kwargs)
    times = []
    for _ in range(repeats):
        _sync(args)
        start = time.perf_counter()
        fn(*args, **kwargs)
        _sync(args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC or None


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    if match is None:
        raise OSError(field)
    return int(match.group(1)) * 1024


def peak_memory(fn: Callable[..., Any], *args: Any, device: str | torch.device | None = None,
                **kwargs: Any) -> int | None:
    """Bytes by which memory rose above its starting level while ``fn(*args, **kwargs)`` ran.

    Inputs that already exist are not counted; outputs and everything allocated and freed on
    the way are. ``device`` defaults to the device of the first tensor argument. Returns None
    where the platform offers no way to measure (CPU on anything but Linux).
    """
    if device is None:
        device = next((a.device for a in args if isinstance(a, torch.Tensor)), torch.device("cpu"))
    device = torch.device(device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - start)
    libc = _libc()
    if not sys.platform.startswith("linux") or libc is None:
        return None
    try:
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # reset VmHWM (peak resident set) to the current resident set
        start = _status("VmRSS")
        fn(*args, **kwargs)
        return max(0, _status("VmHWM") - start)
    except OSError:
        return None


def format_bytes(n: int | float | None) -> str:
    """1536 -> '1.5 KiB'; None -> 'n/a'."""
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def format_count(n: int) -> str:
    """12345678 -> '12.35 M'; exact below ten thousand."""
    if n < 10_000:
        return str(n)
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return str(n)
