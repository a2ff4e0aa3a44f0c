"""Exercise checkers accept the solutions and reject wrong answers; student copies strip solutions."""
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from einops import einsum, rearrange, reduce

from tutorial_lib.exercises import check, list_exercises, passes, verdict
from tutorial_lib.exercises.core import REGISTRY, expect_prediction
from tutorial_lib.exercises.student import main as student_main
from tutorial_lib.exercises.student import strip_solutions, student_copy, write_student_copies

ROOT = Path(__file__).resolve().parents[1]


def test_check_prints_one_verdict(capsys):
    check("00.2", lambda v: reduce(v, "b c t h w -> b t c", "mean"))
    assert capsys.readouterr().out.startswith("✓ [00.2]")
    check("00.2", lambda v: reduce(v, "b c t h w -> b t c", "max"))
    out = capsys.readouterr().out
    assert out.startswith("✗ [00.2]") and "wrong values" in out and "Hint:" in out


def test_not_done_and_crashing_answers_are_feedback_not_errors():
    def stub(v):
        raise NotImplementedError

    ok, line = verdict("00.2", stub)
    assert not ok and line.startswith("… [00.2]") and "not done yet" in line
    ok, line = verdict("00.2", lambda v: v.view(-1, 7))
    assert not ok and "your answer raised RuntimeError" in line
    ok, line = verdict("00.2", lambda v: None)
    assert not ok and "should be a tensor" in line
    ok, line = verdict("00.1", (0.25, ...))
    assert not ok and "not done yet" in line
    with pytest.raises(KeyError, match="no exercise '99.9'"):
        verdict("99.9", stub)


def _gram_nchw_pattern_on_nhwc(x):          # the bug of exercise 00.3: a pattern for the other layout
    return einsum(x, x, "b c h w, b d h w -> b c d")


def _attention_pool(x, scores):
    weights = torch.softmax(rearrange(scores, "b h w -> b (h w)"), dim=-1)
    return einsum(rearrange(x, "b c h w -> b c (h w)"), weights, "b c n, b n -> b c")


@pytest.mark.parametrize("exercise_id, right, wrongs", [
    ("00.1", (0.25, 0.0), [(0.5, 0.0), (1.0, 1.0), (0.25, 0.25), (0.0, 0.0), ("0.25", 0.0), 0.25]),
    ("00.2", lambda v: reduce(v, "b c t h w -> b t c", "mean"),
     [lambda v: reduce(v, "b c t h w -> b c t", "mean"), lambda v: reduce(v, "b c t h w -> b t c", "sum"),
      lambda v: reduce(v, "b c t h w -> b c", "mean"),
      lambda v: rearrange(reduce(v, "b c t h w -> b c t", "mean"), "b c t -> b (c t)").view(2, 4, 3)]),
    ("00.3", lambda x: einsum(x, x, "b h w c, b h w d -> b c d"),
     [_gram_nchw_pattern_on_nhwc, lambda x: einsum(x, x, "b h w c, b h v c -> b w v"),
      lambda x: einsum(x, x, "b h w c, b h w d -> b c d") / (x.shape[1] * x.shape[2])]),
    ("00.4", _attention_pool,
     [lambda x, s: einsum(rearrange(x, "b c h w -> b c (h w)"), torch.softmax(rearrange(s, "b h w -> b (h w)"), dim=0),
                          "b c n, b n -> b c"),
      lambda x, s: einsum(x, torch.softmax(s, dim=-1), "b c h w, b h w -> b c"),
      lambda x, s: einsum(x, s, "b c h w, b h w -> b c"),
      lambda x, s: _attention_pool(x, s) / (x.shape[2] * x.shape[3]),
      lambda x, s: reduce(x, "b c h w -> b c", "mean")]),
])
def test_notebook_00_checkers(exercise_id, right, wrongs):
    assert passes(exercise_id, right)
    for wrong in wrongs:
        assert not passes(exercise_id, wrong)


def test_notebook_00_messages_never_print_a_pattern():
    wrong = {"00.1": (0.5, 0.5), "00.2": lambda v: reduce(v, "b c t h w -> b c t", "mean"),
             "00.3": _gram_nchw_pattern_on_nhwc, "00.4": lambda x, s: einsum(x, s, "b c h w, b h w -> b c")}
    for exercise_id, answer in wrong.items():
        ok, line = verdict(exercise_id, answer)
        assert not ok and "->" not in line and "dim=" not in line, line


def test_every_notebook_with_exercises_has_registered_checkers():
    ids = {e.id for e in list_exercises()}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        src = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        for used in set(re.findall(r'check\("(\d\d\.\d+)"', src)):
            assert used in ids, f"{path.name} calls check({used!r}), which is not registered"


def test_strip_solutions_keeps_indentation_and_the_rest():
    src = "def f(x):\n    # BEGIN SOLUTION\n    return x + 1\n    # END SOLUTION\n\n\ncheck('00.1', f)\n"
    out = strip_solutions(src)
    assert "return x + 1" not in out and "check('00.1', f)" in out
    assert "    # YOUR CODE HERE\n    raise NotImplementedError(" in out
    with pytest.raises(ValueError, match="no matching"):
        strip_solutions("# BEGIN SOLUTION\nx = 1\n")


def test_student_copies_of_the_committed_notebooks():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        copy = student_copy(nb)
        code = [c for c in copy["cells"] if c["cell_type"] == "code"]
        assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
        text = "\n".join("".join(c["source"]) for c in code)
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        n_solutions = sum("".join(c["source"]).count("# BEGIN SOLUTION") for c in nb["cells"]
                          if c["cell_type"] == "code")
        assert text.count("# YOUR CODE HERE") == n_solutions
        assert nb["cells"][0]["source"] == copy["cells"][0]["source"]   # the original is untouched
        for cell in code:                                                # every cell still parses
            compile("".join(cell["source"]), f"{path.name} (student copy)", "exec")


def test_top_level_solutions_become_ellipsis_placeholders_that_run():
    src = "# predict, then run\n# BEGIN SOLUTION\nprediction = 0.5 ** 16\nlow, high = 1, 2\n# END SOLUTION\ncheck('00.1', prediction)\n"
    out = strip_solutions(src)
    assert "0.5 ** 16" not in out and "prediction = ...\nlow = ...\nhigh = ...\n" in out
    namespace = {"check": lambda *a: None}
    exec(compile(out, "cell", "exec"), namespace)          # "Run all" goes on past the cell
    assert namespace["prediction"] is Ellipsis
    with pytest.raises(ValueError, match="assigns no name"):
        strip_solutions("# BEGIN SOLUTION\nprint(1)\n# END SOLUTION\n")


def test_an_ellipsis_answer_is_not_done_for_every_checker():
    for ex in list_exercises():
        for placeholder in (..., (..., 1), {"a": ...}):
            ok, line = verdict(ex.id, placeholder)
            assert not ok and "not done yet" in line, ex.id


def test_expect_prediction_compares_with_a_tolerance():
    expect_prediction(0.105, 0.1, "p")
    expect_prediction(3, 3.2, "p", abs_=0.5)
    with pytest.raises(AssertionError, match="your prediction 0.2 is too high") as err:
        expect_prediction(0.2, 0.1, "p")
    assert "0.1" not in str(err.value).replace("0.2", "")
    with pytest.raises(AssertionError, match="your prediction 0.05 is too low"):
        expect_prediction(0.05, 0.1, "p")
    with pytest.raises(AssertionError, match="single number"):
        expect_prediction("0.1", 0.1, "p")
    with pytest.raises(AssertionError, match="single number"):
        expect_prediction(True, 1.0, "p")


def test_student_copies_never_overwrite_work_unless_forced(tmp_path, capsys):
    source, target = tmp_path / "nb", tmp_path / "student"
    source.mkdir()
    nb = {"cells": [{"cell_type": "code", "source": "def f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION\n",
                     "outputs": [], "execution_count": 1, "metadata": {}}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    for name in ("00_a.ipynb", "01_b.ipynb"):
        (source / name).write_text(json.dumps(nb))
    assert write_student_copies(source, target) == {"written": ["00_a.ipynb", "01_b.ipynb"], "replaced": [], "skipped": []}
    (target / "00_a.ipynb").write_text("my work")
    assert student_main([str(source), str(target)]) == 0
    out = capsys.readouterr().out
    assert "skipped 2 student notebook(s)" in out and "00_a.ipynb, 01_b.ipynb" in out and "--force" in out
    assert (target / "00_a.ipynb").read_text() == "my work"
    assert student_main([str(source), str(target), "--force"]) == 0
    assert "replaced 2 existing" in capsys.readouterr().out
    assert "YOUR CODE HERE" in (target / "00_a.ipynb").read_text()
    with pytest.raises(FileNotFoundError, match="expected notebooks"):
        write_student_copies(tmp_path / "empty", target)


def test_only_the_placeholder_means_not_done_a_library_error_is_feedback():
    from tutorial_lib.exercises.core import STUB_MESSAGE
    ex_id = "00.2"                                          # takes a function

    def stub(*args):
        raise NotImplementedError(STUB_MESSAGE)

    def misuse(*args):
        raise NotImplementedError("Ellipsis inside parenthesis in the left side is not supported")

    assert "not done yet" in verdict(ex_id, stub)[1]
    ok, line = verdict(ex_id, misuse)
    assert not ok and "your answer raised NotImplementedError: Ellipsis inside" in line
    assert STUB_MESSAGE in strip_solutions("def f():\n    # BEGIN SOLUTION\n    pass\n    # END SOLUTION\n")


# --- predict-then-run checkers keep their secrets ----------------------------------------------
# Every registered exercise is probed with numbers; those whose checker answers a number with
# "too high" / "too low" (or compares it through expect_prediction) are predict-then-run. For each,
# the measured value is found (recorded from expect_prediction, else by bisection on the checker's
# own "too high" / "too low"), and a far wrong answer's message must say only which side it is on:
# no number in it may agree with the measured value to 2, 3 or 4 significant digits (numbers in the
# exercise's title or hint excepted: the notebook shows those).

NUMBER = re.compile(r"(?<![\w.])[-+]?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?%?")


def _outcome(ex, answer):
    """("ok" | "high" | "low" | "function" | "other", message) of one checker call."""
    try:
        ex.checker(answer)
    except AssertionError as err:
        msg = str(err)
        return ("high" if "too high" in msg else "low" if "too low" in msg else "other"), msg
    except TypeError as err:
        return ("function" if "not callable" in str(err) else "other"), str(err)
    except Exception as err:  # noqa: BLE001 - any complaint about the form of the answer
        return "other", f"{type(err).__name__}: {err}"
    return "ok", ""


class _Recorder:
    """Records the measured value of every expect_prediction call made by any checker module."""

    def __init__(self, monkeypatch):
        from tutorial_lib.exercises import core
        self.values = []
        original = core.expect_prediction

        def recording(got, actual, *args, **kwargs):
            self.values.append(float(actual))
            return original(got, actual, *args, **kwargs)

        for name, module in list(sys.modules.items()):
            if name.startswith("tutorial_lib.exercises") and getattr(module, "expect_prediction", None) is original:
                monkeypatch.setattr(module, "expect_prediction", recording)

    def run(self, ex, answer):
        self.values.clear()
        return _outcome(ex, answer)


def _answer(values, n):
    return values[0] if n == 1 else tuple(values)


def _components(ex, rec):
    """How many numbers the checker wants, if it is predict-then-run (else None)."""
    if _outcome(ex, 0.37)[0] == "function":
        return None
    for n in (1, 2, 3, 4):
        for probe in (0.37, 3, 10.0 ** 9):
            out, _ = rec.run(ex, _answer([probe] * n, n))
            if out != "other" or rec.values:
                return n
    return None


def _solve(ex, rec, known, k, n):
    """The measured value of component k, given the earlier ones (later ones are nan)."""
    def answer(v):
        return _answer(known + [v] + [float("nan")] * (n - k - 1), n)

    for kind in (float, int):
        lo, hi = kind(-10 ** 9), kind(10 ** 9)
        out_lo, out_hi = rec.run(ex, answer(lo))[0], rec.run(ex, answer(hi))[0]
        if len(rec.values) > k:                      # compared through expect_prediction: exact
            return kind, [rec.values[k]]
        if (out_lo, out_hi) == ("low", "high"):
            break
    else:
        raise AssertionError(f"{ex.id}: number {k + 1} of the answer is not answered 'too high' / 'too low' "
                             f"when far off (by {ex.checker.__name__})")

    def split(a, b):
        return (a + b) // 2 if kind is int else (a + b) / 2

    def close(a, b):
        return b - a <= 1 if kind is int else b - a <= 1e-9 * max(1.0, abs(a), abs(b))

    inside = None
    while inside is None:                             # a value the checker accepts
        mid = split(lo, hi)
        out = rec.run(ex, answer(mid))[0]
        if out == "high":
            hi = mid
        elif out == "low":
            lo = mid
        else:
            inside = mid
        assert not close(lo, hi), f"{ex.id}: no answer accepted between {lo} and {hi}"
    edges = []
    for outside in (lo, hi):                          # the accepted interval's two edges
        a, b = outside, inside
        while not close(min(a, b), max(a, b)):
            mid = split(a, b)
            a, b = (mid, b) if rec.run(ex, answer(mid))[0] in ("high", "low") else (a, mid)
        edges.append(b)
    centres = [(edges[0] + edges[1]) / 2]             # symmetric tolerance (absolute or relative)
    if edges[0] > 0:
        centres.append(math.sqrt(edges[0] * edges[1]))  # a tolerance by ratio
    return kind, centres


def _round_sig(x, digits):
    return 0.0 if x == 0 else round(x, digits - 1 - math.floor(math.log10(abs(x))))


def _agrees(token, truths):
    text = token.replace(",", "").rstrip("%")
    value = float(text)
    candidates = [value, value / 100] if token.endswith("%") else [value]
    return any(math.isclose(_round_sig(v, d), _round_sig(t * f, d), rel_tol=1e-9, abs_tol=1e-12)
               for v in candidates for t in truths for d in (2, 3, 4) for f in (1 - 1e-7, 1, 1 + 1e-7))


def _secrets_kept(ex, rec):
    """Problems with ex's messages for wrong predictions (empty when it keeps its secrets)."""
    n = _components(ex, rec)
    if n is None:
        return None
    kinds, truths = [], []
    for k in range(n):
        kind, values = _solve(ex, rec, [t[0] if kd is float else int(round(t[0])) for kd, t in zip(kinds, truths)],
                              k, n)
        kinds.append(kind)
        truths.append(values)
    right = [t[0] if kd is float else int(round(t[0])) for kd, t in zip(kinds, truths)]
    shown = ex.title + " " + ex.hint
    problems = []
    for k in range(n):
        a = right[k]
        for wrong in (a - 1 - abs(a), a + 1 + abs(a)):
            answer = list(right)
            answer[k] = kinds[k](wrong)
            out, msg = _outcome(ex, _answer(answer, n))
            if out not in ("high", "low"):
                problems.append(f"{ex.id}: a wrong prediction's message says neither 'too high' nor 'too low': {msg!r}")
            leaked = [tok for tok in NUMBER.findall(msg) if _agrees(tok, truths[k]) and tok not in shown]
            if leaked:
                problems.append(f"{ex.id}: a wrong prediction's message shows the measured value "
                                f"({', '.join(leaked)}): {msg!r}")
    return problems


@pytest.mark.parametrize("exercise_id", [e.id for e in list_exercises()])
def test_a_wrong_prediction_is_told_too_high_or_too_low_never_the_measured_value(exercise_id, monkeypatch):
    ex = REGISTRY[exercise_id]
    problems = _secrets_kept(ex, _Recorder(monkeypatch))
    if problems is None:
        assert "predict" not in ex.title.lower(), (
            f"{exercise_id} is titled as a prediction, but its checker answers no number with 'too high' "
            f"or 'too low'")
        return
    assert problems == []


def test_the_secret_keeping_test_finds_a_checker_that_tells_the_value(monkeypatch):
    from tutorial_lib.exercises import core

    def telling(prediction):                          # the old form: the measured value in the message
        try:
            core.expect_prediction(prediction, 0.10714, "share", abs_=0.005)
        except AssertionError as err:
            raise AssertionError(f"{err}; the measured value is 0.1071") from None

    def telling_its_own_way(prediction):              # no expect_prediction, a tolerance by ratio
        if not 1 / 1.05 < prediction / 4096 < 1.05:
            raise AssertionError(f"your prediction is too {'high' if prediction > 4096 else 'low'}; "
                                 f"the measured factor is 4,096")

    def telling_the_second(pair):                     # two numbers; the second one's message tells 10.7%
        core.expect_prediction(pair[0], 3.0, "first", rel=0.1)
        if not abs(pair[1] - 0.1071) <= 0.01:
            raise AssertionError(f"too {'high' if pair[1] > 0.1071 else 'low'}: it is 10.7%")

    def keeping(prediction):
        core.expect_prediction(prediction, 0.10714, "share of the 8x8 tile's mass", abs_=0.005)

    def keeping_a_count(count):                       # exact whole numbers, its own comparison
        if isinstance(count, bool) or not isinstance(count, int):
            raise AssertionError("a count is a whole number")
        if count != 4736:
            raise AssertionError(f"your count is too {'high' if count > 4736 else 'low'}")

    rec = _Recorder(monkeypatch)

    def problems(checker):
        return _secrets_kept(core.Exercise("99.1", "predict", "count the pixels of the 8x8 tile", checker), rec)

    assert any("(0.1071)" in p for p in problems(telling))
    assert any("(4,096)" in p for p in problems(telling_its_own_way))
    assert any("(10.7%)" in p for p in problems(telling_the_second))
    assert problems(keeping) == []
    assert problems(keeping_a_count) == []
    assert problems(lambda fn: fn(1)) is None         # an exercise that takes a function


def test_a_placeholder_wrapped_by_a_checker_is_still_not_done(monkeypatch):
    from tutorial_lib.exercises import core

    def wrapping(fn):
        try:
            fn(1)
        except Exception as err:
            raise AssertionError(f"your function raised {type(err).__name__}") from err

    def stub(x):
        raise NotImplementedError(core.STUB_MESSAGE)

    def own_error(x):
        raise NotImplementedError("this mode is not supported")

    monkeypatch.setitem(core.REGISTRY, "99.1", core.Exercise("99.1", "a variant", "look at the axis", wrapping))
    assert core.decide("99.1", stub)[0] == "not done"
    assert core.decide("99.1", own_error)[0] == "fails"
    assert core.decide("99.1", lambda x: x)[0] == "passes"
