"""Exercises with checkers.

An exercise is registered under an id such as ``"00.1"`` with a checker: a function that
receives the learner's answer (usually a function they wrote) and raises ``AssertionError``
with a helpful message when the answer is wrong. ``check(id, answer)`` runs it and prints one
line: a tick, a cross with the reason and a hint, or a note that the exercise is not done yet.
``passes(id, answer)`` runs the same checker silently and returns True or False (for tests
and for graders that collect scores).

In the notebooks, solutions sit between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` lines;
``python -m tutorial_lib.exercises.student`` (``make student``) writes student copies with
those parts removed.

Kinds of exercise, and how their checkers work:

* write a function (a variant the notebook did not show, a fixed version of a buggy one, a
  formula for a new configuration): the checker calls it on fresh inputs and compares with a
  reference computed independently (plain loops, or counted on real modules);
* predict, then run: the learner writes a number before running a cell; the checker
  computes the true value itself and compares (``expect_prediction``). In the student copy
  the prediction is ``...`` (Ellipsis), which every checker reports as "not done yet".

Hints say what to look at (the axis, the scale, the shape, the normalisation), never the
code; checker messages say what is wrong with the answer, never the solution.

Decisions, not printed lines, are a learner's progress. ``verdict`` (and so ``check`` and
``passes``) returns the line to show, and when the environment variable named by
``DECISIONS_ENV`` holds a file path, it also appends the checker's decision to that file as one
JSON line ``{"id": "02.3", "decision": "passes"}`` ("passes", "fails" or "not done").
``python -m tutorial_lib.exercises.progress`` sets the variable, for the kernel it starts
only, to a fresh file in a private temporary folder, and reads the decisions from there after
each cell: text that a cell prints (a copied "✓ [02.3] ... correct", say) reaches the cell's
output and never that file. The limit, plainly: the learner's code runs in the same process as
the checkers, so code written to forge (that reads the variable and writes to the file, or
replaces a checker) can still forge; printing cannot. Without the variable, nothing is written.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

__all__ = ["Exercise", "exercise", "check", "passes", "verdict", "decide", "list_exercises", "expect_close",
           "expect_shape", "expect_prediction", "not_done", "random_input", "DECISIONS_ENV"]


@dataclass(frozen=True)
class Exercise:
    id: str
    title: str
    hint: str
    checker: Callable[[Any], None]


REGISTRY: dict[str, Exercise] = {}
# What the student copy's placeholder raises (tutorial_lib/exercises/student.py writes it).
STUB_MESSAGE = "exercise: replace this line with your code"
# Set by the progress runner for the kernel it starts: the file that receives every decision.
DECISIONS_ENV = "TUTORIAL_LIB_DECISIONS"
DECISIONS = ("passes", "fails", "not done")


def exercise(id: str, title: str, hint: str) -> Callable[[Callable[[Any], None]], Callable[[Any], None]]:
    """Decorator registering ``checker`` as the checker of exercise ``id``."""
    def register(checker: Callable[[Any], None]) -> Callable[[Any], None]:
        if id in REGISTRY:
            raise ValueError(f"exercise {id!r} is registered twice")
        REGISTRY[id] = Exercise(id, title, hint, checker)
        return checker
    return register


def list_exercises(prefix: str = "") -> list[Exercise]:
    """The registered exercises whose id starts with ``prefix`` (e.g. ``"01."``), in order."""
    return [REGISTRY[k] for k in sorted(REGISTRY) if k.startswith(prefix)]


def decide(id: str, answer: Any) -> tuple[str, str]:
    """Run the checker of exercise ``id`` on ``answer``; return (decision, the line to show).

    The decision is "passes", "fails" or "not done". Nothing is printed or recorded.
    """
    if id not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise KeyError(f"check: no exercise {id!r}; known exercises: {known}")
    ex = REGISTRY[id]
    not_yet = f"… [{id}] {ex.title}: not done yet. Hint: {ex.hint}"
    if not_done(answer):
        return "not done", not_yet
    try:
        ex.checker(answer)
    except Exception as err:
        # the student copy's placeholder (or a bare raise), also where a checker wrapped its error
        # in one of its own, means "not done"; a library raising NotImplementedError with a message
        # of its own (einops does, for some misuse) is a real error
        if _placeholder_behind(err):
            return "not done", not_yet
        if isinstance(err, AssertionError):
            return "fails", f"✗ [{id}] {ex.title}: {err}\n  Hint: {ex.hint}"
        # the learner's code raised: report it as feedback, not a crash
        return "fails", (f"✗ [{id}] {ex.title}: your answer raised {type(err).__name__}: {err}\n"
                         f"  Hint: {ex.hint}")
    return "passes", f"✓ [{id}] {ex.title}: correct"


def _placeholder_behind(err: BaseException | None) -> bool:
    """True if the student copy's placeholder raised ``err`` or an error in its chain."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, NotImplementedError) and str(err) in ("", STUB_MESSAGE):
            return True
        err = err.__cause__ or err.__context__
    return False


def _record(id: str, decision: str) -> None:
    """Append a decision to the file named by ``DECISIONS_ENV`` (only while progress runs)."""
    path = os.environ.get(DECISIONS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"id": id, "decision": decision}) + "\n")


def verdict(id: str, answer: Any) -> tuple[bool, str]:
    """Run the checker of exercise ``id`` on ``answer``; return (correct, the line to show).

    The decision is also recorded for ``progress`` when it runs the notebook (see the module's
    docstring); outside a progress run nothing is recorded.
    """
    decision, line = decide(id, answer)
    _record(id, decision)
    return decision == "passes", line


def check(id: str, answer: Any) -> None:
    """Check ``answer`` for exercise ``id`` and print the verdict (✓, ✗ with a hint, or …)."""
    print(verdict(id, answer)[1])


def passes(id: str, answer: Any) -> bool:
    """True if ``answer`` solves exercise ``id``; prints nothing."""
    return verdict(id, answer)[0]


# --- helpers for writing checkers -----------------------------------------------------------

def not_done(answer: Any) -> bool:
    """True for the placeholder of a student copy: ``...``, or a tuple, list or dict holding it."""
    if answer is Ellipsis:
        return True
    if isinstance(answer, (tuple, list)):
        return any(a is Ellipsis for a in answer)
    if isinstance(answer, dict):
        return any(a is Ellipsis for a in answer.values())
    return False


def expect_prediction(got: Any, actual: float, what: str, *, rel: float = 0.1, abs_: float = 0.0) -> None:
    """Assert that a predicted number is within ``rel`` (relative) or ``abs_`` of the measured one.

    A wrong prediction's message says only "too high" or "too low", never the measured value:
    the notebooks do not print every value a learner predicts, and a checker that answered
    with the number would turn the exercise into a copy.
    """
    if isinstance(got, bool) or not isinstance(got, (int, float)) and not (
            isinstance(got, torch.Tensor) and got.numel() == 1):
        raise AssertionError(f"{what}: write your prediction as a single number, but it is "
                             f"{type(got).__name__}")
    got = float(got)
    if got != got:
        raise AssertionError(f"{what}: your prediction is nan")
    tolerance = max(abs_, rel * abs(actual))
    if abs(got - actual) > tolerance:
        side = "high" if got > actual else "low"
        raise AssertionError(f"{what}: your prediction {got:.4g} is too {side}")


def random_input(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A reproducible random tensor that does not touch the global random state."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


def expect_shape(got: Any, shape: tuple[int, ...], what: str) -> None:
    """Assert that ``got`` is a tensor of ``shape``."""
    assert isinstance(got, torch.Tensor), f"{what} should be a tensor, but it is {type(got).__name__}"
    assert tuple(got.shape) == tuple(shape), \
        f"{what} should have shape {tuple(shape)}, but has shape {tuple(got.shape)}"


def expect_close(got: Any, expected: torch.Tensor, what: str, *, atol: float = 1e-5, rtol: float = 1e-4) -> None:
    """Assert that ``got`` has the expected shape and values."""
    expect_shape(got, tuple(expected.shape), what)
    if not torch.allclose(got.to(expected.dtype), expected, atol=atol, rtol=rtol):
        worst = (got.to(expected.dtype) - expected).abs().max().item()
        raise AssertionError(f"{what} has the right shape but wrong values "
                             f"(largest difference {worst:.3g})")
