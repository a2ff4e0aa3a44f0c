"""Exercise checkers accept the solutions and reject wrong answers; student copies strip solutions."""
import json
import re
from pathlib import Path

import pytest
import torch
from einops import einsum, rearrange, reduce

from tutorial_lib.exercises import check, list_exercises, passes, verdict
from tutorial_lib.exercises.student import strip_solutions, student_copy

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
