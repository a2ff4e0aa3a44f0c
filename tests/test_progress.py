"""The progress report executes a learner's notebook and reads the verdicts of its checks."""
import json

import pytest

from tutorial_lib.exercises import list_exercises
from tutorial_lib.exercises.progress import format_table, main, notebook_progress, verdicts_in


def test_verdicts_are_read_from_cell_outputs():
    found = verdicts_in(["✓ [01.2] excite: correct\n", "✗ [01.2] excite: wrong\n  Hint: ...",
                         "… [01.3] placement: not done yet", "text ✓ [01.9] not at a line start"])
    assert found == {"01.2": {"✓", "✗"}, "01.3": {"…"}}


def _cell(source):
    return {"cell_type": "code", "id": f"cell-{abs(hash(source)) % 10**8}", "source": source, "metadata": {},
            "outputs": [], "execution_count": None}


@pytest.fixture
def learner_notebook(tmp_path):
    ids = [e.id for e in list_exercises("00.")]
    assert len(ids) >= 3, "notebook 00 registers at least three exercises"
    first, second, third = ids[:3]
    cells = [
        _cell(f"print('✓ [{first}] done: correct')"),
        _cell(f"print('✗ [{first}] a wrong answer shown as a demo')"),          # a demo next to a pass
        _cell(f"print('✗ [{second}] wrong values')"),
        _cell("undefined_name + 1"),                                             # a broken cell
        _cell(f"print('… [{third}] not done yet')"),
    ]
    nb = {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                       "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "00_learner.ipynb"
    path.write_text(json.dumps(nb))
    return path, ids


def test_a_learner_notebook_is_run_in_a_fresh_kernel_and_summarised(learner_notebook, capsys):
    path, ids = learner_notebook
    before = path.read_text()
    result = notebook_progress(path, timeout=60)
    assert path.read_text() == before                                    # the learner's file is untouched
    assert result.status[ids[0]] == "passes" and result.status[ids[1]] == "fails"
    assert result.status[ids[2]] == "not done"
    assert all(result.status[i] == "not checked" for i in ids[3:])
    assert result.errors == ["code cell 4: NameError"]
    table = format_table([result])
    assert f"1 of {len(ids)} exercises pass" in table and "NameError raised an error" in table
    assert main([str(path)]) == 1                                         # not everything passes
    assert "exercises pass" in capsys.readouterr().out


def test_bad_arguments_exit_with_status_2(tmp_path, capsys):
    assert main(["--dir", str(tmp_path)]) == 2
    assert "expected learner notebooks" in capsys.readouterr().err
