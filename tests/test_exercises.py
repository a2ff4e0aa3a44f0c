"""Exercise checkers accept the solutions and reject wrong answers; student copies strip solutions."""
import json
import re
from pathlib import Path

import pytest
import torch
from einops import einsum, rearrange, reduce

from tutorial_lib.exercises import check, list_exercises, passes, verdict
from tutorial_lib.exercises.core import expect_prediction
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
