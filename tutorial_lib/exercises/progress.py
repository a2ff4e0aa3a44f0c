"""A learner's progress: which exercises their own notebooks answer correctly.

    python -m tutorial_lib.exercises.progress                     (all notebooks in student/)
    python -m tutorial_lib.exercises.progress student/02_cbam.ipynb
    python -m tutorial_lib.exercises.progress --nb 02 --dir student
    make progress            make progress NB=02            make progress DIR=my_copies

Each notebook is executed top to bottom in a fresh kernel, as a copy in memory (the
learner's file is not changed), with errors allowed so that one broken cell does not hide
the rest. A cell that runs longer than ``--timeout`` seconds (an endless loop, say) stops that
notebook, keeps what its earlier cells decided, and the report goes on with the next notebook.

**What is read: the checkers' decisions, not printed text.** The runner starts the kernel with
the environment variable ``TUTORIAL_LIB_DECISIONS`` naming a fresh file in a private temporary
folder (a random name, new for every notebook). Inside the kernel, every ``check``/``passes``/
``verdict`` call appends its decision to that file ("passes", "fails" or "not done"; see
``tutorial_lib.exercises.core``). After each cell the runner reads what was appended, so every
decision is tied to the cell that made it. The cells' outputs are not read at all: a cell that
prints "✓ [00.4] ... correct" changes nothing. The limit: the learner's code runs in the kernel
beside the checkers, so code written on purpose to forge (writing to that file, replacing a
checker) can still forge; printing cannot. The report is a learner's dashboard and a grader's
first pass, not proof against someone who sets out to cheat.

**Which decisions count: those made in the learner's cells.** The notebooks also check
deliberately wrong answers to show what a checker says (a buggy function in a find-the-bug
exercise prints ✗ by design); those must not count against the learner. The learner's cells are
the cells that held a solution in the course notebook (between ``# BEGIN SOLUTION`` and
``# END SOLUTION``), and, for a prediction written in a cell of its own, the next cell that
checks it. ``make student`` marks them in the copy's cell metadata (``{"exercise": {"counts":
[ids]}}``, see ``tutorial_lib.exercises.student``); a course notebook is read from its solution
markers; a copy made before cells were marked is matched, cell by cell id, with the course
notebook of the same name in ``--course`` (default: the course's ``notebooks/``). A decision
counts when its cell is a learner's cell for that exercise. If a learner deletes that cell and
writes the answer in a new one, the exercise shows as "not checked": copy the cell instead.

The table lists every exercise registered for the notebook:

    passes       a counted check of it decided "correct"
    fails        its counted checks decided "wrong" only
    not done     its counted checks found the placeholder only (a fresh student copy)
    not checked  no counted check of it ran (its cell was deleted, or an earlier cell stopped the kernel)

Exit status: 0 when every listed exercise passes, 1 otherwise, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .core import DECISIONS, DECISIONS_ENV, STUB_MESSAGE, list_exercises
from .student import MARK, solution_cells

__all__ = ["NotebookProgress", "notebook_progress", "counted_cells", "run_and_collect", "main"]

STATUS_ORDER = ("passes", "fails", "not done", "not checked")
COURSE_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


@dataclass
class NotebookProgress:
    """The decisions of one executed notebook."""

    path: Path
    status: dict[str, str] = field(default_factory=dict)   # exercise id -> one of STATUS_ORDER
    errors: list[str] = field(default_factory=list)        # "code cell 7: NameError", or why the run stopped

    @property
    def passed(self) -> int:
        return sum(s == "passes" for s in self.status.values())


def counted_cells(nb: dict, course: Path | None = None, name: str = "") -> dict[int, set[str]]:
    """The learner's cells of a notebook: cell index -> ids whose decisions in that cell count.

    Read from the student copy's marks; else from solution markers (a course notebook); else,
    by cell id, from the course notebook called ``name`` in the folder ``course``.
    """
    cells = nb["cells"]
    marked = {i: set((c.get("metadata", {}).get(MARK) or {}).get("counts", []))
              for i, c in enumerate(cells) if c.get("cell_type") == "code" and MARK in c.get("metadata", {})}
    if marked:
        return marked
    derived = solution_cells(nb)
    if derived:
        return {i: set(ids) for i, ids in derived.items()}
    source = (course or COURSE_NOTEBOOKS) / name
    if name and source.is_file():
        original = json.loads(source.read_text(encoding="utf-8"))
        by_id = {original["cells"][i].get("id"): set(ids) for i, ids in solution_cells(original).items()}
        by_id.pop(None, None)
        return {i: by_id[c["id"]] for i, c in enumerate(cells) if c.get("id") in by_id}
    return {}


def run_and_collect(path: Path, timeout: int = 600):
    """Execute the notebook at ``path`` in a fresh kernel; return it, the decisions per cell, and
    why the run stopped early (None when every cell ran).

    The decisions are ``{cell index: [(exercise id, decision), ...]}``, read from the file the
    kernel's checkers write to (never from the cells' outputs). A cell that runs longer than
    ``timeout`` seconds, or a kernel that dies, stops the run; the decisions made so far are kept.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    nb = nbformat.read(path, as_version=4)
    decisions: dict[int, list[tuple[str, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="progress-") as folder:
        log = Path(folder) / f"{secrets.token_hex(16)}.jsonl"
        log.touch(mode=0o600)
        state = {"offset": 0, "rest": "", "running": None}

        def started(cell, cell_index):
            state["running"] = cell_index

        def collect(cell, cell_index, execute_reply):
            with open(log, encoding="utf-8") as f:
                f.seek(state["offset"])
                text = state["rest"] + f.read()
                state["offset"] = f.tell()
            *lines, state["rest"] = text.split("\n")
            for line in lines:
                try:
                    record = json.loads(line)
                    entry = (str(record["id"]), str(record["decision"]))
                except (ValueError, KeyError, TypeError):
                    continue
                if entry[1] in DECISIONS:
                    decisions.setdefault(cell_index, []).append(entry)

        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                record_timing=False, resources={"metadata": {"path": str(path.parent)}},
                                on_cell_execute=started, on_cell_executed=collect,
                                extra_arguments=["--IPKernelApp.log_level=ERROR"])   # no start-up notes
        stopped = None
        try:
            client.execute(env={**os.environ, DECISIONS_ENV: str(log)})
        except (CellTimeoutError, DeadKernelError) as err:
            number = sum(c.cell_type == "code" for c in nb.cells[:state["running"] + 1])
            why = f"ran longer than {timeout} s" if isinstance(err, CellTimeoutError) else "stopped the kernel"
            stopped = f"code cell {number} {why}; the cells after it did not run"
    return nb, decisions, stopped


def _status(decisions: list[str]) -> str:
    if not decisions:
        return "not checked"
    if "passes" in decisions:
        return "passes"
    if "fails" in decisions:
        return "fails"
    return "not done"


def notebook_progress(path: Path, timeout: int = 600, course: Path | None = None) -> NotebookProgress:
    """Execute the notebook at ``path`` in a fresh kernel and collect its learner's decisions."""
    nb, decisions, stopped = run_and_collect(path, timeout)
    counted = counted_cells(nb, course, path.name)
    per_id: dict[str, list[str]] = {}
    for index, made in decisions.items():
        for ex_id, decision in made:
            if ex_id in counted.get(index, ()):
                per_id.setdefault(ex_id, []).append(decision)
    errors = []
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        for out in cell.get("outputs", []):
            if stopped and stopped.startswith(f"code cell {number} ") and out.get("ename") == "KeyboardInterrupt":
                continue                      # the runner's own interrupt of that cell, said below
            if out.get("output_type") == "error":
                # a cell tagged raises-exception shows a clear error on purpose (nbval expects it)
                if "raises-exception" in cell.get("metadata", {}).get("tags", []):
                    continue
                # a placeholder called outside a checker is work not done yet, not an error
                if not (out.get("ename") == "NotImplementedError" and out.get("evalue") == STUB_MESSAGE):
                    errors.append(f"code cell {number}: {out.get('ename')}")
    if stopped:
        errors.append(stopped)
    prefix = path.name[:2] + "."
    ids = [e.id for e in list_exercises(prefix)] or sorted({i for ids in counted.values() for i in ids})
    result = NotebookProgress(path, errors=errors)
    for ex_id in ids:
        result.status[ex_id] = _status(per_id.get(ex_id, []))
    return result


def _titles() -> dict[str, str]:
    return {e.id: e.title for e in list_exercises()}


def format_table(results: list[NotebookProgress]) -> str:
    """The progress table, one line per exercise, and a summary line."""
    titles = _titles()
    lines = [f"{'notebook':<34} {'exercise':<9} {'status':<12} title"]
    counts = dict.fromkeys(STATUS_ORDER, 0)
    for result in results:
        for ex_id, status in result.status.items():
            lines.append(f"{result.path.name:<34} {ex_id:<9} {status:<12} {titles.get(ex_id, '')}")
            counts[status] += 1
        for error in result.errors:
            shown = error if error.endswith("did not run") else f"{error} raised an error"
            lines.append(f"{result.path.name:<34} {'':<9} {'(error)':<12} {shown}")
    total = sum(counts.values())
    lines.append(f"{counts['passes']} of {total} exercises pass; {counts['fails']} fail, "
                 f"{counts['not done']} not done, {counts['not checked']} not checked")
    return "\n".join(lines)


def _notebooks(args: argparse.Namespace) -> list[Path]:
    if args.paths:
        paths: list[Path] = []
        for p in args.paths:
            paths.extend(sorted(p.glob("[0-9][0-9]_*.ipynb")) if p.is_dir() else [p])
    else:
        pattern = f"{args.nb}_*.ipynb" if args.nb else "[0-9][0-9]_*.ipynb"
        paths = sorted(args.dir.glob(pattern))
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks or folders (default: --dir)")
    parser.add_argument("--dir", type=Path, default=Path("student"), help="folder of the learner's notebooks")
    parser.add_argument("--nb", help="only this notebook number, e.g. 02")
    parser.add_argument("--course", type=Path, default=None,
                        help="folder of the course notebooks, for copies without marked cells "
                             "(default: the course's notebooks/)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = _notebooks(args)
    missing = [p for p in paths if not p.exists()]
    if missing or not paths:
        where = ", ".join(str(p) for p in missing) if missing else (
            ", ".join(str(p) for p in args.paths) or f"{args.dir}/" + (f"{args.nb}_*.ipynb" if args.nb else ""))
        print(f"progress: expected learner notebooks, but found none at {where} "
              f"(make student writes copies to student/)", file=sys.stderr)
        return 2
    results = []
    for path in paths:
        print(f"running {path} in a fresh kernel ...", file=sys.stderr, flush=True)
        results.append(notebook_progress(path, args.timeout, args.course))
    print(format_table(results))
    return 0 if all(s == "passes" for r in results for s in r.status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
