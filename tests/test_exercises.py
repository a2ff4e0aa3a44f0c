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
    check("00.1", lambda x: rearrange(x, "b c h w -> b (h w) c"))
    assert capsys.readouterr().out.startswith("✓ [00.1]")
    check("00.1", lambda x: rearrange(x, "b c h w -> b (w h) c"))
    out = capsys.readouterr().out
    assert out.startswith("✗ [00.1]") and "wrong values" in out and "Hint:" in out


def test_not_done_and_crashing_answers_are_feedback_not_errors():
    def stub(x):
        raise NotImplementedError

    ok, line = verdict("00.4", stub)
    assert not ok and line.startswith("… [00.4]") and "not done yet" in line
    ok, line = verdict("00.4", lambda x: x.view(-1, 5))
    assert not ok and "your answer raised RuntimeError" in line
    ok, line = verdict("00.4", lambda x: None)
    assert not ok and "should be a tensor" in line
    with pytest.raises(KeyError, match="no exercise '99.9'"):
        verdict("99.9", stub)


@pytest.mark.parametrize("exercise_id, right, wrongs", [
    ("00.1", lambda x: rearrange(x, "b c h w -> b (h w) c"),
     [lambda x: rearrange(x, "b c h w -> b (w h) c"), lambda x: rearrange(x, "b c h w -> b c (h w)")]),
    ("00.2", lambda x: einsum(x, x, "b c h w, b d h w -> b c d"),
     [lambda x: einsum(x, x, "b c h w, b c h v -> b w v"), lambda x: einsum(x, x, "b c h w, b d h w -> b c d") / 20]),
    ("00.3", lambda x: torch.softmax(x.flatten(2), dim=-1).view_as(x),
     [lambda x: torch.softmax(x, dim=1), lambda x: torch.softmax(x, dim=-1)]),
    ("00.4", lambda x: reduce(x, "b c (h h2) (w w2) -> b c h w", "max", h2=2, w2=2),
     [lambda x: reduce(x, "b c (h h2) (w w2) -> b c h w", "mean", h2=2, w2=2),
      lambda x: reduce(x, "b c (h2 h) (w2 w) -> b c h w", "max", h2=2, w2=2)]),
])
def test_notebook_00_checkers(exercise_id, right, wrongs):
    assert passes(exercise_id, right)
    for wrong in wrongs:
        assert not passes(exercise_id, wrong)


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
    with pytest.raises(AssertionError, match="you predicted 0.2, the measured value is 0.1"):
        expect_prediction(0.2, 0.1, "p")
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
