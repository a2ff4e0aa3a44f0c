"""Write student copies of the notebooks: solutions removed, outputs cleared, work never lost.

    python -m tutorial_lib.exercises.student notebooks student            (or: make student)
    python -m tutorial_lib.exercises.student notebooks student --force    (or: make student FORCE=1)

In every code cell, the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` (markers
included) are replaced by a ``# YOUR CODE HERE`` line and a placeholder:

* inside a function (an indented block), ``raise NotImplementedError(...)``, which ``check``
  reports as "not done yet";
* at the top level of a cell (a prediction such as ``prediction = 0.25``), the same names
  assigned ``...`` (Ellipsis), so that "Run all" goes on and ``check`` reports "not done yet".

Every output and execution count is cleared, so the copy opens as a fresh worksheet.

The learner's cells are marked: every cell that held a solution, and for a solution that
calls no checker (a prediction written in one cell and checked after the next run), the next
code cell that calls one, get the cell metadata ``{"exercise": {"counts": ["02.3"]}}``: the
exercises whose checker decisions made in that cell are the learner's. ``progress`` counts
those decisions only, so the notebooks' demonstrations (a buggy function checked to show its
✗, a rejected variant) never count against the learner. ``solution_cells`` finds these cells
in a course notebook; JupyterLab keeps cell metadata when a cell is edited.

A student copy that already exists is never overwritten (it may hold a learner's work): it
is skipped and named in the report. ``--force`` overwrites, and says which files it replaced.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

from .core import STUB_MESSAGE

BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")
# A call of a checker with the exercise's id: check("02.3", ...), passes(...), verdict(...).
CHECK_CALL = re.compile(r"\b(?:check|passes|verdict)\(\s*[\"'](\d\d\.\d+)[\"']")
# Cell metadata key of the learner's cells: {"exercise": {"counts": [ids]}}.
MARK = "exercise"


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def solution_cells(nb: dict) -> dict[int, list[str]]:
    """The learner's cells of a course notebook: cell index -> ids of the exercises they answer.

    A cell with a ``# BEGIN SOLUTION`` line answers the exercises whose checkers it calls. A
    solution cell that calls no checker (a prediction) is answered by the next code cell that
    calls one, before the next solution cell: both cells are returned, with that cell's ids.
    """
    cells = nb["cells"]
    code = [i for i, c in enumerate(cells) if c.get("cell_type") == "code"]
    found: dict[int, set[str]] = {}
    for k, i in enumerate(code):
        src = _source(cells[i])
        if not any(BEGIN.match(line) for line in src.splitlines()):
            continue
        ids = set(CHECK_CALL.findall(src))
        if not ids:
            for j in code[k + 1:]:
                later = _source(cells[j])
                if any(BEGIN.match(line) for line in later.splitlines()):
                    break
                if CHECK_CALL.search(later):
                    ids = set(CHECK_CALL.findall(later))
                    found.setdefault(j, set()).update(ids)
                    break
        found.setdefault(i, set()).update(ids)
    return {i: sorted(ids) for i, ids in sorted(found.items())}


def _assigned_names(block: str) -> list[str]:
    """Names assigned at the top level of a solution block, in order (``a = ...``, ``a, b = ...``)."""
    try:
        tree = ast.parse(block)
    except SyntaxError as err:
        raise ValueError(f"a top-level solution block does not parse: {err}") from None
    names: list[str] = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for target in targets:
            for name in ast.walk(target):
                if isinstance(name, ast.Name) and name.id not in names:
                    names.append(name.id)
    if not names:
        raise ValueError("a top-level solution block assigns no name; write the answer as "
                         "'name = ...' so that the student copy can leave a placeholder")
    return names


def strip_solutions(source: str) -> str:
    """Replace every solution block of one cell's source."""
    out: list[str] = []
    block: list[str] | None = None
    indent = ""
    for line in source.splitlines(keepends=True):
        if block is None and (m := BEGIN.match(line)):
            indent, block = m.group(1), []
        elif block is not None and END.match(line):
            out.append(f"{indent}# YOUR CODE HERE\n")
            if indent:
                out.append(f'{indent}raise NotImplementedError("{STUB_MESSAGE}")\n')
            else:
                out.extend(f"{name} = ...\n" for name in _assigned_names("".join(block)))
            block = None
        elif block is not None:
            block.append(line)
        else:
            out.append(line)
    if block is not None:
        raise ValueError("a '# BEGIN SOLUTION' has no matching '# END SOLUTION'")
    return "".join(out)


def student_copy(nb: dict) -> dict:
    """A student version of a notebook (as parsed JSON)."""
    nb = json.loads(json.dumps(nb))
    for index, ids in solution_cells(nb).items():
        nb["cells"][index].setdefault("metadata", {})[MARK] = {"counts": ids}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        cell["source"] = strip_solutions(src)
        cell["outputs"] = []
        cell["execution_count"] = None
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def write_student_copies(source: Path, target: Path, *, force: bool = False) -> dict[str, list[str]]:
    """Write the student copies of every notebook in ``source`` to ``target``.

    Returns the file names under "written", "replaced" (existing files, with ``force``) and
    "skipped" (existing files, without ``force``: never overwritten).
    """
    paths = sorted(source.glob("*.ipynb"))
    if not paths:
        raise FileNotFoundError(f"student copies: expected notebooks in {source}/, but found none")
    target.mkdir(parents=True, exist_ok=True)
    report: dict[str, list[str]] = {"written": [], "replaced": [], "skipped": []}
    for path in paths:
        dest = target / path.name
        if dest.exists() and not force:
            report["skipped"].append(path.name)
            continue
        nb = json.loads(path.read_text(encoding="utf-8"))
        text = json.dumps(student_copy(nb), indent=1, ensure_ascii=False) + "\n"
        report["replaced" if dest.exists() else "written"].append(path.name)
        dest.write_text(text, encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the course notebooks")
    parser.add_argument("target", type=Path, help="folder to write the student copies to")
    parser.add_argument("--force", action="store_true",
                        help="overwrite student copies that exist already (their work is lost)")
    args = parser.parse_args(argv)
    report = write_student_copies(args.source, args.target, force=args.force)
    if report["written"]:
        print(f"wrote {len(report['written'])} student notebook(s) to {args.target}/: "
              + ", ".join(report["written"]))
    if report["replaced"]:
        print(f"replaced {len(report['replaced'])} existing student notebook(s) (--force): "
              + ", ".join(report["replaced"]))
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} student notebook(s) that exist already, to keep the "
              f"work in them: " + ", ".join(report["skipped"]))
        print("  to start one afresh, delete or rename it and run this again; "
              "to overwrite them all, add --force (make student FORCE=1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
