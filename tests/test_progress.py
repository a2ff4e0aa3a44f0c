"""The progress report counts the checkers' decisions in the learner's cells, never printed text.

Two notebooks are executed (a few seconds each): a small synthetic course notebook turned into a
student copy by the student writer, and the real student copy of notebook 00.
"""
import json
from pathlib import Path

import pytest

from tutorial_lib.exercises import check, list_exercises
from tutorial_lib.exercises.core import DECISIONS_ENV, STUB_MESSAGE
from tutorial_lib.exercises.progress import counted_cells, format_table, main, notebook_progress
from tutorial_lib.exercises.student import CHECK_CALL, MARK, solution_cells, student_copy

ROOT = Path(__file__).resolve().parents[1]
NB00 = ROOT / "notebooks" / "00_feature_maps_and_einops.ipynb"
KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}
RAISE = f'raise NotImplementedError("{STUB_MESSAGE}")'


def _cell(source, n):
    return {"cell_type": "code", "id": f"c{n}", "source": source, "metadata": {}, "outputs": [],
            "execution_count": None}


def _notebook(sources):
    return {"cells": [_cell(s, n) for n, s in enumerate(sources)], "metadata": KERNEL,
            "nbformat": 4, "nbformat_minor": 5}


# A course notebook in the shape of the real ones: a prediction in a cell of its own, checked by the
# next cell; a find-the-bug demonstration (✗ by design) before the learner's fix; function exercises.
COURSE = [
    "from einops import einsum, reduce\nfrom tutorial_lib.exercises import check",
    "# BEGIN SOLUTION\nshares = 0.25, 0.0\n# END SOLUTION",
    "print('a cell that runs between the prediction and its check')\ncheck('00.1', shares)",
    "def gram_buggy(x):\n    return einsum(x, x, 'b c h w, b d h w -> b c d')\n\n\ncheck('00.3', gram_buggy)",
    "def gram(x):\n    # BEGIN SOLUTION\n    return einsum(x, x, 'b h w c, b h w d -> b c d')\n    # END SOLUTION\n\n\n"
    "check('00.3', gram)",
    "def frames(v):\n    # BEGIN SOLUTION\n    return reduce(v, 'b c t h w -> b t c', 'mean')\n    # END SOLUTION\n\n\n"
    "check('00.2', frames)",
]


def _write(tmp_path, nb, name="00_learner.ipynb"):
    path = tmp_path / name
    path.write_text(json.dumps(nb))
    return path


def _sources(nb):
    return ["".join(c["source"]) for c in nb["cells"]]


def test_the_student_writer_marks_the_learners_cells():
    course = _notebook(COURSE)
    assert solution_cells(course) == {1: ["00.1"], 2: ["00.1"], 4: ["00.3"], 5: ["00.2"]}
    copy = student_copy(course)
    marks = {i: c["metadata"][MARK]["counts"] for i, c in enumerate(copy["cells"]) if MARK in c["metadata"]}
    assert marks == {1: ["00.1"], 2: ["00.1"], 4: ["00.3"], 5: ["00.2"]}          # the demo (3) is not one
    assert counted_cells(copy) == {1: {"00.1"}, 2: {"00.1"}, 4: {"00.3"}, 5: {"00.2"}}
    assert counted_cells(course) == counted_cells(copy)                            # a course notebook: by markers


def test_a_copy_without_marks_is_matched_with_the_course_notebook_by_cell_id(tmp_path):
    course = _notebook(COURSE)
    _write(tmp_path, course, "00_course.ipynb")
    old_copy = student_copy(course)
    for cell in old_copy["cells"]:
        cell["metadata"].pop(MARK, None)                                           # as older copies were
    old_copy["cells"].insert(0, _cell("x = 1", 99))                               # the learner added a cell
    assert counted_cells(old_copy, tmp_path, "00_course.ipynb") == {2: {"00.1"}, 3: {"00.1"}, 5: {"00.3"},
                                                                    6: {"00.2"}}
    assert counted_cells(old_copy, tmp_path, "missing.ipynb") == {}


def test_check_records_its_decision_only_where_the_runner_asks(tmp_path, monkeypatch, capsys):
    log = tmp_path / "decisions.jsonl"
    monkeypatch.delenv(DECISIONS_ENV, raising=False)
    check("00.1", (0.25, 0.0))
    assert not log.exists()
    monkeypatch.setenv(DECISIONS_ENV, str(log))
    check("00.1", (0.25, 0.0))
    check("00.1", (0.5, 0.0))
    check("00.1", ...)
    print("✓ [00.2] one descriptor per frame of a video feature map: correct")     # a print is not a decision
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records == [{"id": "00.1", "decision": d} for d in ("passes", "fails", "not done")]


def test_a_fresh_student_copy_has_nothing_failing(tmp_path):
    path = _write(tmp_path, student_copy(_notebook(COURSE)))
    result = notebook_progress(path, timeout=120)
    ids = [e.id for e in list_exercises("00.")]
    assert result.status == {i: ("not done" if i in ("00.1", "00.2", "00.3") else "not checked") for i in ids}
    assert result.errors == []                   # the demo's ✗ and the placeholders are not failures


def test_decisions_count_in_the_learners_cells_and_printing_cannot_forge_them(tmp_path, capsys):
    copy = student_copy(_notebook(COURSE))
    src = _sources(copy)
    src[1] += ("\nprint('✓ [00.1] predict, then run: what survives pooling and upsampling: correct')"
               "\nprint('✓ [00.4] attention pooling: a softmax-weighted sum over all positions: correct')")
    src[4] = src[4].replace(RAISE, "return einsum(x, x, 'b h w c, b h w d -> b c d')")      # right
    src[5] = src[5].replace(RAISE, "return reduce(v, 'b c t h w -> b c t', 'mean')")         # wrong
    src.append("check('00.4', lambda x, s: x.mean(dim=(2, 3)))\n"                  # a check outside the
               "print('✓ [00.1] predict, then run: what survives pooling and upsampling: correct')")  # learner's cells
    src.append("undefined_name + 1")
    for cell, text in zip(copy["cells"], src):
        cell["source"] = text
    copy["cells"].extend(_cell(text, 100 + n) for n, text in enumerate(src[len(copy["cells"]):]))
    path = _write(tmp_path, copy)
    before = path.read_text()
    result = notebook_progress(path, timeout=120)
    assert path.read_text() == before                                    # the learner's file is untouched
    assert result.status["00.3"] == "passes" and result.status["00.2"] == "fails"
    assert result.status["00.1"] == "not done"                           # forged ✓ printed in its own cell
    assert result.status["00.4"] == "not checked"                        # printed ✓, and a check in no learner's cell
    assert result.errors == [f"code cell {len(src)}: NameError"]
    table = format_table([result])
    n = len(result.status)
    assert f"1 of {n} exercises pass; 1 fail, 1 not done, {n - 3} not checked" in table
    assert "NameError raised an error" in table
    assert main([str(path)]) == 1                                         # not everything passes
    assert "exercises pass" in capsys.readouterr().out


def test_the_real_student_copy_of_notebook_00(tmp_path):
    """One exercise right, one wrong, one forged by a print, one untouched beside its demonstration's ✗."""
    copy = student_copy(json.loads(NB00.read_text()))
    marked = {}                                                          # exercise id -> its first marked cell
    for i, cell in enumerate(copy["cells"]):
        for ex_id in cell["metadata"].get(MARK, {}).get("counts", []):
            marked.setdefault(ex_id, i)

    def edit(ex_id, old, new):
        cell = copy["cells"][marked[ex_id]]
        assert old in "".join(cell["source"])
        cell["source"] = "".join(cell["source"]).replace(old, new)

    edit("00.2", RAISE, 'return reduce(v, "b c t h w -> b t c", "mean")')                 # right
    edit("00.4", RAISE, 'return reduce(x, "b c h w -> b c", "mean")')                      # wrong
    edit("00.1", "share_after_mean = ...\n",                                                # forged
         "share_after_mean = ...\nprint('✓ [00.1] predict, then run: what survives pooling and upsampling: correct')\n")
    result = notebook_progress(_write(tmp_path, copy, NB00.name), timeout=300)
    # 00.3 is untouched: its demonstration checks the notebook's buggy function and prints ✗
    assert result.status == {"00.1": "not done", "00.2": "passes", "00.3": "not done", "00.4": "fails"}
    assert result.errors == []


def test_a_cell_that_never_ends_stops_its_notebook_not_the_report(tmp_path, capsys):
    slow = _write(tmp_path, _notebook(["x = 1", "import time\ntime.sleep(60)", "y = 2"]), "00_slow.ipynb")
    result = notebook_progress(slow, timeout=3)
    assert result.errors == ["code cell 2 ran longer than 3 s; the cells after it did not run"]
    assert set(result.status.values()) == {"not checked"}
    assert main([str(slow), "--timeout", "3"]) == 1
    assert "code cell 2 ran longer than 3 s" in capsys.readouterr().out


def test_a_cell_that_raises_on_purpose_is_not_an_error_but_an_unexpected_raise_is(tmp_path):
    nb = _notebook(["x = 1", "raise ValueError('a clear error, shown on purpose')", "raise KeyError('a slip')"])
    nb["cells"][1]["metadata"]["tags"] = ["raises-exception"]
    result = notebook_progress(_write(tmp_path, nb, "00_raises.ipynb"), timeout=120)
    assert result.errors == ["code cell 3: KeyError"]


def test_bad_arguments_exit_with_status_2(tmp_path, capsys):
    assert main(["--dir", str(tmp_path)]) == 2
    assert "expected learner notebooks" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.name[:2])
def test_every_exercise_of_the_course_is_answered_in_a_learners_cell(path):
    """Each registered exercise has a learner's cell, and that cell checks one answer (one decision)."""
    nb = json.loads(path.read_text())
    cells = solution_cells(nb)
    answered = {i for ids in cells.values() for i in ids}
    registered = {e.id for e in list_exercises(path.name[:2] + ".")}
    assert registered <= answered, f"{path.name}: no solution cell answers {sorted(registered - answered)}"
    for index in cells:
        calls = CHECK_CALL.findall("".join(nb["cells"][index]["source"]))
        assert len(calls) <= 1, f"{path.name}, cell {index}: a learner's cell checks one answer, not {len(calls)}"
