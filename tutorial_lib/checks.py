"""Executable shape checks and the error helpers every module uses.

Two audiences:

* modules call ``check_input`` and the ``check_*`` hyper-parameter helpers so that bad input
  fails early with a message that names the module, what it expected and what it got;
* notebooks call ``check_shape`` / ``show_shape`` so that every shape claim is verified by
  code, not only written in a comment.

Error messages have one form: ``"<Module>: <what was expected>, but got <what arrived>"``.
"""
from __future__ import annotations

import numbers
from typing import Iterable, Sequence

import torch
from einops import parse_shape

__all__ = [
    "ShapeError",
    "check_input",
    "check_int",
    "check_float",
    "check_choice",
    "check_odd",
    "check_bool",
    "check_shape",
    "show_shape",
    "describe_shape",
]


class ShapeError(ValueError):
    """A tensor did not have the shape a pattern promised."""


def _shape(x: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in x.shape) + ")"


def check_input(
    module: str,
    x: object,
    *,
    ndim: int | Sequence[int],
    layout: str,
    channels: int | None = None,
    name: str = "input",
) -> torch.Tensor:
    """Validate a module's input tensor and return it.

    ``ndim`` is the accepted number of dimensions (one int or several), ``layout`` a
    human-readable description such as ``"(B, C, H, W)"`` used in the message, and
    ``channels`` the size that dimension 1 must have (the value the module was built for).

    Raises ``TypeError`` for a non-tensor or a non-floating dtype and ``ValueError`` for a
    wrong number of dimensions, a channel count other than the one built for, or an empty
    tensor.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{module}: expected the {name} to be a torch.Tensor {layout}, "
                        f"but got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{module}: expected a floating-point {name} (float16/bfloat16/float32/"
                        f"float64), but got dtype {x.dtype}; convert it with .float()")
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.dim() not in allowed:
        dims = " or ".join(f"{d}-D" for d in allowed)
        raise ValueError(f"{module}: expected a {dims} {name} {layout}, but got a {x.dim()}-D "
                         f"tensor of shape {_shape(x)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{module}: was built for {channels} channels, but got an {name} with "
                         f"{x.shape[1]} channels (shape {_shape(x)})")
    if x.numel() == 0:
        raise ValueError(f"{module}: expected a non-empty {name}, but got shape {_shape(x)}")
    return x


def check_int(module: str, name: str, value: object, *, minimum: int | None = 1,
              maximum: int | None = None) -> int:
    """``value`` must be an int (not a bool) within [minimum, maximum]; returns it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{module}: expected {name} to be an integer, but got "
                        f"{type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{module}: expected {name} >= {minimum}, but got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{module}: expected {name} <= {maximum}, but got {value}")
    return value


def check_float(module: str, name: str, value: object, *, minimum: float | None = None,
                maximum: float | None = None, strict_minimum: bool = False) -> float:
    """``value`` must be a real number within the bounds; returns it as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{module}: expected {name} to be a number, but got "
                        f"{type(value).__name__} {value!r}")
    value = float(value)
    if value != value:  # NaN
        raise ValueError(f"{module}: expected {name} to be a number, but got nan")
    if minimum is not None:
        if strict_minimum and value <= minimum:
            raise ValueError(f"{module}: expected {name} > {minimum}, but got {value}")
        if not strict_minimum and value < minimum:
            raise ValueError(f"{module}: expected {name} >= {minimum}, but got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{module}: expected {name} <= {maximum}, but got {value}")
    return value


def check_choice(module: str, name: str, value: object, choices: Iterable[object]) -> object:
    """``value`` must be one of ``choices``; returns it."""
    choices = tuple(choices)
    if value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{module}: expected {name} to be one of {listed}, but got {value!r}")
    return value


def check_odd(module: str, name: str, value: object) -> int:
    """``value`` must be a positive odd integer (a kernel size that keeps the map's size)."""
    value = check_int(module, name, value, minimum=1)
    if value % 2 == 0:
        raise ValueError(f"{module}: expected an odd {name} (so that 'same' padding keeps H and W), "
                         f"but got {value}")
    return value


def check_bool(module: str, name: str, value: object) -> bool:
    """``value`` must be a bool; returns it."""
    if not isinstance(value, bool):
        raise TypeError(f"{module}: expected {name} to be True or False, but got "
                        f"{type(value).__name__} {value!r}")
    return value


# --- shape checks for notebooks -------------------------------------------------------------

def check_shape(x: torch.Tensor, pattern: str, **expected: int) -> dict[str, int]:
    """Check that ``x`` matches an einops-style pattern and the given axis sizes.

    >>> check_shape(torch.zeros(2, 3, 4, 5), "b c h w", c=3)
    {'b': 2, 'c': 3, 'h': 4, 'w': 5}

    Returns the axis sizes; raises ``ShapeError`` (a ``ValueError``) naming the axis that
    differs.
    """
    names = pattern.split()
    if len(names) != x.dim():
        raise ShapeError(f"shape check: pattern '{pattern}' has {len(names)} axes, but the tensor "
                         f"has {x.dim()} (shape {_shape(x)})")
    sizes = parse_shape(x, pattern)
    for axis, size in expected.items():
        if axis not in sizes:
            raise ShapeError(f"shape check: axis '{axis}' is not in pattern '{pattern}'")
        if sizes[axis] != size:
            raise ShapeError(f"shape check: expected {axis}={size} in '{pattern}', but got "
                             f"{axis}={sizes[axis]} (shape {_shape(x)})")
    return sizes


def describe_shape(x: torch.Tensor, pattern: str) -> str:
    """``'b=2 c=3 h=4 w=5'`` for a tensor and its pattern."""
    sizes = check_shape(x, pattern)
    return " ".join(f"{k}={v}" for k, v in sizes.items())


def show_shape(name: str, x: torch.Tensor, pattern: str, **expected: int) -> None:
    """Check ``x`` against the pattern (and sizes) and print one stable line about it."""
    check_shape(x, pattern, **expected)
    print(f"{name:<14} {pattern:<16} {describe_shape(x, pattern)}")
