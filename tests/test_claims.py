"""tutorial_lib.claims: results over seeds, paired comparisons, the verdict rule, assertions."""
import math
import statistics

import pytest

import tutorial_lib as tl


def test_mean_spread_is_the_sample_mean_and_standard_deviation():
    values = [0.91, 0.88, 0.95, 0.90, 0.86]
    mean, spread = tl.mean_spread(values)
    assert mean == pytest.approx(statistics.fmean(values))
    assert spread == pytest.approx(statistics.stdev(values))
    assert tl.mean_spread([0.5]) == (0.5, 0.0)
    assert tl.format_mean_spread(values) == "0.900 ± 0.034 (5 seeds)"
    assert tl.format_mean_spread([0.5]) == "0.500 ± 0.000 (1 seed)"
    assert tl.format_mean_spread(values, percent=True) == "90.0 ± 3.4 % (5 seeds)"
    assert tl.format_mean_spread([-0.0001, 0.0001]) == "0.000 ± 0.000 (2 seeds)"   # never "-0.000"


def test_bad_results_are_refused_by_name():
    with pytest.raises(ValueError, match="mean_spread: expected at least one value"):
        tl.mean_spread([])
    with pytest.raises(TypeError, match=r"compare \(SE\): expected a sequence of numbers"):
        tl.compare(["a"], [1.0], names=("SE", "plain"))
    with pytest.raises(ValueError, match="SE has 3 and plain has 2"):
        tl.compare([1, 2, 3], [1, 2], names=("SE", "plain"))
    with pytest.raises(ValueError, match="a result is nan"):
        tl.compare([1.0, math.nan], [1.0, 1.0])
    with pytest.raises(ValueError, match="margin >= 0, but got -0.1"):
        tl.compare([1.0], [1.0], margin=-0.1)


def test_paired_differences_are_taken_seed_by_seed():
    se, plain = [0.92, 0.93, 0.88, 0.90, 0.91], [0.61, 0.66, 0.65, 0.60, 0.70]
    p = tl.compare(se, plain, names=("SE", "plain"))
    diffs = [x - y for x, y in zip(se, plain)]
    assert p.differences == pytest.approx(tuple(diffs))
    assert p.mean == pytest.approx(statistics.fmean(diffs))
    assert p.spread == pytest.approx(statistics.stdev(diffs))
    assert p.stderr == pytest.approx(statistics.stdev(diffs) / math.sqrt(5))
    assert (p.n, p.ahead, p.verdict) == (5, 5, "better")
    assert str(p) == "SE - plain: +0.264 ± 0.043 paired over 5 seeds (SE ahead on 5): SE better than plain"


def test_pairing_finds_a_consistent_gain_that_unpaired_spreads_hide():
    # a large seed-to-seed swing shared by both arms, and a small steady gain of 0.01
    base = [0.60, 0.90, 0.70, 0.80, 0.65]
    a, b = [x + 0.01 for x in base], base
    unpaired_overlap = abs(statistics.fmean(a) - statistics.fmean(b)) < 2 * statistics.stdev(b) / math.sqrt(5)
    assert unpaired_overlap
    assert tl.compare(a, b).verdict == "better"


def test_the_verdict_follows_the_stated_rule_at_its_boundaries():
    # differences with mean m and standard error se: better only when m > 2 se
    def arms(diffs):
        return [0.5 + d for d in diffs], [0.5] * len(diffs)

    clear = [0.10, 0.12, 0.08, 0.11, 0.09]
    assert tl.compare(*arms(clear)).verdict == "better"
    assert tl.compare(*arms([-d for d in clear])).verdict == "worse"
    noisy = [0.10, -0.08, 0.05, -0.02, 0.01]          # mean 0.012, se 0.031
    assert tl.compare(*arms(noisy)).verdict == "not distinguishable"
    # the margin: a steady gain of 0.02 is "better" with margin 0 and not with margin 0.05
    steady = [0.02, 0.021, 0.019, 0.02, 0.02]
    assert tl.compare(*arms(steady)).verdict == "better"
    assert tl.compare(*arms(steady), margin=0.05).verdict == "not distinguishable"
    # one seed can never tell
    assert tl.compare([0.9], [0.1]).verdict == "not distinguishable"
    # identical arms
    assert tl.compare([0.5, 0.6], [0.5, 0.6]).verdict == "not distinguishable"
    # for a loss, lower is better
    p = tl.compare([0.20, 0.21, 0.19], [0.40, 0.42, 0.41], names=("CBAM", "plain"), higher_is_better=False)
    assert (p.verdict, p.ahead) == ("better", 3)
    assert "RULE" in tl.__all__ and "two of its standard errors" in tl.RULE


def test_assertions_name_the_claim_and_the_numbers():
    p = tl.compare([0.92, 0.80, 0.95], [0.70, 0.82, 0.65], names=("SE", "plain"))
    p.assert_ahead(by=-0.05)
    p.assert_ahead(by=0.10, every_seed=False)
    with pytest.raises(tl.ClaimError) as err:
        p.assert_ahead(by=0.10)
    message = str(err.value)
    assert "'SE ahead of plain by more than 0.1 on every seed' does not hold" in message
    assert "differences = [0.2200, -0.0200, 0.3000]" in message and "verdict = " in message
    assert isinstance(err.value, AssertionError)
    p.assert_within(0.2)
    with pytest.raises(tl.ClaimError, match="within ±0.2 of each other on every seed"):
        p.assert_within(0.2, every_seed=True)
    with pytest.raises(tl.ClaimError, match="SE better compared with plain"):
        p.assert_verdict("better")
    p.assert_verdict("not distinguishable", "better")
    with pytest.raises(ValueError, match="expected verdicts among"):
        p.assert_verdict("best")
    loss = tl.compare([0.2, 0.3], [0.5, 0.6], names=("A", "B"), higher_is_better=False)
    loss.assert_ahead(by=0.25)          # lower by more than 0.25 on every seed


def test_claim_passes_silently_and_fails_with_its_numbers():
    tl.claim("the gate is highest on the odd tile", True)
    with pytest.raises(tl.ClaimError, match=r"'odd above background' does not hold here: odd = 0.4170; "
                                            r"background = 0.4090; seeds = \[0, 1\]"):
        tl.claim("odd above background", 0.417 < 0.409, odd=0.417, background=0.409, seeds=[0, 1])
    with pytest.raises(TypeError, match="non-empty sentence"):
        tl.claim("", True)


def test_results_table_prints_every_arm_and_the_paired_verdicts():
    runs = {"plain": [0.61, 0.66, 0.65], "SE": [0.92, 0.93, 0.88], "noise": [0.60, 0.70, 0.62]}
    table = tl.results_table(runs, baseline="plain", metric="accuracy")
    assert table.splitlines() == [
        "arm    accuracy (mean ± sd, seeds)     minus plain (paired)      ahead   verdict",
        "plain  0.640 ± 0.026 (3 seeds)",
        "SE     0.910 ± 0.026 (3 seeds)         +0.270 ± 0.040            3/3     better",
        "noise  0.640 ± 0.053 (3 seeds)         +0.000 ± 0.036            1/3     not distinguishable",
    ]
    assert "minus" not in tl.results_table(runs)
    with pytest.raises(ValueError, match="baseline 'GAP' is not among the arms"):
        tl.results_table(runs, baseline="GAP")


def test_seeds_default_and_shifted_by_the_environment(monkeypatch):
    monkeypatch.delenv("COURSE_SEED_BASE", raising=False)
    assert tl.seeds(5) == (0, 1, 2, 3, 4)
    monkeypatch.setenv("COURSE_SEED_BASE", "10")
    assert tl.seeds(3) == (10, 11, 12)
    monkeypatch.setenv("COURSE_SEED_BASE", "ten")
    with pytest.raises(ValueError, match="COURSE_SEED_BASE must be a whole number, but it is 'ten'"):
        tl.seeds(3)
    monkeypatch.setenv("COURSE_SEED_BASE", "-1")
    with pytest.raises(ValueError, match="must be >= 0"):
        tl.seeds(3)
    with pytest.raises(ValueError, match="number of seeds >= 1, but got 0"):
        tl.seeds(0)


def test_results_table_widens_its_columns_for_long_names():
    runs = {"global context": [0.4, 0.45], "non-local": [0.99, 0.98]}
    lines = tl.results_table(runs, baseline="global context", metric="accuracy on match").splitlines()
    head = lines[0]
    assert "minus global context (paired)  ahead" in head and "accuracy on match (mean ± sd, seeds)  minus" in head
    assert head.index("ahead") == lines[2].index("2/2")
