"""Claims about measured numbers: results over seeds, paired comparisons, one rule for a
verdict, and assertions that name the claim and the numbers when they fail.

Why the notebooks need this: a trained accuracy is not the same on every machine. Another CPU,
thread count or maths library changes the last bits of a float, and a few hundred training
steps turn them into another second decimal. So a notebook prints such numbers in a cell whose
output strict nbval does not compare, and that cell ends by *asserting the claim its text
makes* ("SE ahead of plain by more than 10 points on every seed"), with a margin the spread
over seeds justifies. The assertion is the test, on every machine.

The rule for a verdict, stated once (``RULE``): the arms share their seeds, so the comparison
is made seed by seed. With the paired differences d_i = A_i - B_i over n seeds, their mean m
and standard error se = sd(d) / sqrt(n):

* A is **better** than B when m > 2 se and m > margin;
* A is **worse** than B when m < -2 se and m < -margin;
* otherwise the two are **not distinguishable** here (always so with one seed).

``margin`` (default 0) is the smallest difference that matters; for a loss, where lower is
better, pass ``higher_is_better=False``.

Typical use in a notebook::

    runs = {"plain": [...], "SE": [...]}        # one number per seed, same seeds for every arm
    print(tl.results_table(runs, baseline="plain"))
    se_vs_plain = tl.compare(runs["SE"], runs["plain"], names=("SE", "plain"))
    se_vs_plain.assert_ahead(by=0.10)           # "SE ahead of plain by more than 0.10 on every seed"

``seeds(n)`` hands out the seeds a notebook trains with: ``0 .. n-1``, or ``k .. k+n-1`` when
the environment variable ``COURSE_SEED_BASE`` is ``k``, so that the claims can be re-checked
on seeds nobody tuned them on (``make test-seeds``).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = ["RULE", "ClaimError", "claim", "compare", "Paired", "mean_spread", "format_mean_spread",
           "results_table", "seeds"]

RULE = ("Rule for every verdict: the arms share their seeds, so they are compared seed by seed. "
        "A is better than B when the mean of the paired differences A - B is above two of its "
        "standard errors (and above the stated margin, if any); worse in the mirror case; "
        "otherwise not distinguishable here.")

VERDICTS = ("better", "worse", "not distinguishable")


class ClaimError(AssertionError):
    """A claim that a notebook's text makes did not hold for the numbers measured here."""


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_number(v) for v in value) + "]"
    return str(value)


def claim(statement: str, holds: bool, **numbers: object) -> None:
    """Assert one claim of the text; on failure name the claim and the numbers behind it.

    >>> claim("SE ahead of plain on every seed", min(differences) > 0, differences=differences)
    """
    if not isinstance(statement, str) or not statement.strip():
        raise TypeError(f"claim: expected the claim as a non-empty sentence, but got {statement!r}")
    if bool(holds):
        return
    detail = "; ".join(f"{name} = {_number(value)}" for name, value in numbers.items())
    raise ClaimError(f"the claim '{statement}' does not hold here" + (f": {detail}" if detail else ""))


def _values(values: Sequence[float], who: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise TypeError(f"{who}: expected a sequence of numbers (one per seed), but got {values!r}") from None
    if not out:
        raise ValueError(f"{who}: expected at least one value (one per seed), but got none")
    if any(math.isnan(v) for v in out):
        raise ValueError(f"{who}: a result is nan: {out}")
    return out


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation of results over seeds (spread 0 for one value)."""
    vals = _values(values, "mean_spread")
    mean = sum(vals) / len(vals)
    if len(vals) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def format_mean_spread(values: Sequence[float], digits: int = 3, percent: bool = False) -> str:
    """``"0.953 ± 0.012 (3 seeds)"``: mean ± sample standard deviation, rounded.

    ``percent=True`` prints ``"95.3 ± 1.2 % (3 seeds)"`` with ``digits - 2`` decimals.
    """
    mean, spread = mean_spread(values)
    n = len(values)
    unit = "seed" if n == 1 else "seeds"
    if percent:
        d = max(0, digits - 2)
        return f"{round(100 * mean, d) + 0.0:.{d}f} ± {round(100 * spread, d) + 0.0:.{d}f} % ({n} {unit})"
    return f"{round(mean, digits) + 0.0:.{digits}f} ± {round(spread, digits) + 0.0:.{digits}f} ({n} {unit})"


@dataclass(frozen=True)
class Paired:
    """Arm A against arm B, seed by seed (build it with :func:`compare`)."""

    a: tuple[float, ...]
    b: tuple[float, ...]
    names: tuple[str, str] = ("A", "B")
    margin: float = 0.0
    higher_is_better: bool = True

    @property
    def n(self) -> int:
        return len(self.a)

    @property
    def differences(self) -> tuple[float, ...]:
        """A - B for every seed, in the seeds' order."""
        return tuple(x - y for x, y in zip(self.a, self.b))

    @property
    def mean(self) -> float:
        return mean_spread(self.differences)[0]

    @property
    def spread(self) -> float:
        """Sample standard deviation of the paired differences."""
        return mean_spread(self.differences)[1]

    @property
    def stderr(self) -> float:
        """Standard error of the mean difference (infinite with one seed: nothing can be told)."""
        return self.spread / math.sqrt(self.n) if self.n > 1 else math.inf

    @property
    def ahead(self) -> int:
        """On how many seeds A is ahead of B (higher, or lower for a loss)."""
        sign = 1 if self.higher_is_better else -1
        return sum(sign * d > 0 for d in self.differences)

    @property
    def verdict(self) -> str:
        """'better', 'worse' or 'not distinguishable', by ``RULE``."""
        gain = self.mean if self.higher_is_better else -self.mean
        if self.n > 1 and gain > 2 * self.stderr and gain > self.margin:
            return "better"
        if self.n > 1 and -gain > 2 * self.stderr and -gain > self.margin:
            return "worse"
        return "not distinguishable"

    def __str__(self) -> str:
        a, b = self.names
        return (f"{a} - {b}: {self.mean + 0.0:+.3f} ± {self.spread:.3f} paired over {self.n} "
                f"seed{'s' if self.n > 1 else ''} ({a} ahead on {self.ahead}): {a} {self.verdict}"
                + ("" if self.verdict == "not distinguishable" else f" than {b}"))

    def _fail(self, statement: str, holds: bool) -> None:
        claim(statement, holds, differences=[round(d, 4) for d in self.differences],
              mean=round(self.mean, 4), spread=round(self.spread, 4), verdict=self.verdict)

    def assert_ahead(self, by: float = 0.0, *, every_seed: bool = True) -> None:
        """Claim: A ahead of B by more than ``by`` on every seed (``every_seed=False``: on average)."""
        a, b = self.names
        sign = 1 if self.higher_is_better else -1
        gains = [sign * d for d in self.differences]
        if every_seed:
            self._fail(f"{a} ahead of {b} by more than {by:g} on every seed", min(gains) > by)
        else:
            self._fail(f"{a} ahead of {b} by more than {by:g} on average", sign * self.mean > by)

    def assert_within(self, bound: float, *, every_seed: bool = False) -> None:
        """Claim of no effect: the mean difference (``every_seed``: each one) within ±``bound``."""
        a, b = self.names
        if every_seed:
            self._fail(f"{a} and {b} within ±{bound:g} of each other on every seed",
                       max(abs(d) for d in self.differences) <= bound)
        else:
            self._fail(f"{a} and {b} within ±{bound:g} of each other on average", abs(self.mean) <= bound)

    def assert_verdict(self, *allowed: str) -> None:
        """Claim: the verdict by ``RULE`` is one of ``allowed`` (for example ``"better"``)."""
        unknown = [v for v in allowed if v not in VERDICTS]
        if not allowed or unknown:
            raise ValueError(f"Paired.assert_verdict: expected verdicts among {VERDICTS}, but got {allowed}")
        a, b = self.names
        self._fail(f"{a} {' or '.join(allowed)} compared with {b}", self.verdict in allowed)


def compare(a: Sequence[float], b: Sequence[float], *, names: tuple[str, str] = ("A", "B"),
            margin: float = 0.0, higher_is_better: bool = True) -> Paired:
    """Pair two arms' results seed by seed (the i-th value of each comes from the same seed)."""
    va, vb = _values(a, f"compare ({names[0]})"), _values(b, f"compare ({names[1]})")
    if len(va) != len(vb):
        raise ValueError(f"compare: the arms must have one result per shared seed, but {names[0]} has "
                         f"{len(va)} and {names[1]} has {len(vb)}")
    if not (isinstance(margin, (int, float)) and margin >= 0):
        raise ValueError(f"compare: expected a margin >= 0, but got {margin!r}")
    return Paired(va, vb, (str(names[0]), str(names[1])), float(margin), bool(higher_is_better))


def results_table(results: Mapping[str, Sequence[float]], *, baseline: str | None = None, digits: int = 3,
                  margin: float = 0.0, higher_is_better: bool = True, metric: str = "result") -> str:
    """A printable table: every arm's mean ± spread, and with ``baseline`` its paired difference
    from that arm, on how many seeds it is ahead, and the verdict by ``RULE``."""
    if not results:
        raise ValueError("results_table: expected at least one arm, but got none")
    if baseline is not None and baseline not in results:
        raise ValueError(f"results_table: the baseline {baseline!r} is not among the arms {list(results)}")
    width = max(len(str(name)) for name in results) + 2
    column = f"{metric} (mean ± sd, seeds)"
    first = max(32, len(column) + 2)
    second_head = f"minus {baseline} (paired)"
    second = max(26, len(second_head) + 2)
    head = f"{'arm':<{width}}{column:<{first}}"
    if baseline is not None:
        head += f"{second_head:<{second}}{'ahead':<8}verdict"
    lines = [head.rstrip()]
    for name, values in results.items():
        line = f"{name:<{width}}{format_mean_spread(values, digits):<{first}}"
        if baseline is not None and name != baseline:
            p = compare(values, results[baseline], names=(name, baseline), margin=margin,
                        higher_is_better=higher_is_better)
            diff = f"{round(p.mean, digits) + 0.0:+.{digits}f} ± {round(p.spread, digits) + 0.0:.{digits}f}"
            line += f"{diff:<{second}}{f'{p.ahead}/{p.n}':<8}{p.verdict}"
        lines.append(line.rstrip())
    return "\n".join(lines)


def seeds(n: int) -> tuple[int, ...]:
    """The ``n`` seeds a notebook trains with: ``0 .. n-1`` by default.

    With the environment variable ``COURSE_SEED_BASE=k`` they are ``k .. k+n-1``: the same
    notebook on seeds its claims were not written on (``make test-seeds``).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"seeds: expected a number of seeds >= 1, but got {n!r}")
    raw = os.environ.get("COURSE_SEED_BASE", "0").strip() or "0"
    try:
        base = int(raw)
    except ValueError:
        raise ValueError(f"seeds: COURSE_SEED_BASE must be a whole number, but it is {raw!r}") from None
    if base < 0:
        raise ValueError(f"seeds: COURSE_SEED_BASE must be >= 0, but it is {base}")
    return tuple(range(base, base + n))
