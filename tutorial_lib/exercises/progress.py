"""A learner's progress: which exercises pass in their own notebooks.

    python -m tutorial_lib.exercises.progress                     (all notebooks in student/)
    python -m tutorial_lib.exercises.progress student/02_cbam.ipynb
    python -m tutorial_lib.exercises.progress --nb 02 --dir student
    make progress            make progress NB=02            make progress DIR=my_copies

Each notebook is executed top to bottom in a fresh kernel, as a copy in memory (the
learner's file is not changed), with errors allowed so that one broken cell does not hide
the rest. Every ``check(...)`` call prints a verdict line (``✓ [02.1] ...``, ``✗ [02.1] ...``
or ``… [02.1] ... not done yet``); an exercise **passes** when one of its verdicts is ✓ (the
notebooks also show deliberately wrong answers being checked, which print ✗, so a ✗ next to
a ✓ is not a failure). The table lists every exercise registered for the notebook:

    passes       a check of it printed ✓
    fails        its checks printed ✗ only
    not done     its checks printed "not done yet" only
    not checked  no check of it ran (its cell was deleted, or an earlier cell stopped the kernel)

Exit status: 0 when every listed exercise passes, 1 otherwise, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .core import list_exercises

__all__ = ["NotebookProgress", "notebook_progress", "verdicts_in", "main"]

VERDICT = re.compile(r"^(✓|✗|…) \[(\d\d\.\d+)\]", re.M)
STATUS_ORDER = ("passes", "fails", "not done", "not checked")


@dataclass
class NotebookProgress:
    """The verdicts of one executed notebook."""

    path: Path
    status: dict[str, str] = field(default_factory=dict)   # exercise id -> one of STATUS_ORDER
    errors: list[str] = field(default_factory=list)        # "cell 7: NameError" for cells that raised

    @property
    def passed(self) -> int:
        return sum(s == "passes" for s in self.status.values())


def verdicts_in(texts: list[str]) -> dict[str, set[str]]:
    """The verdict symbols printed for every exercise id in a list of cell outputs."""
    found: dict[str, set[str]] = {}
    for text in texts:
        for symbol, ex_id in VERDICT.findall(text):
            found.setdefault(ex_id, set()).add(symbol)
    return found


def _status(symbols: set[str] | None) -> str:
    if not symbols:
        return "not checked"
    if "✓" in symbols:
        return "passes"
    if "✗" in symbols:
        return "fails"
    return "not done"


def _execute(path: Path, timeout: int):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            record_timing=False, resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    return nb


def notebook_progress(path: Path, timeout: int = 600) -> NotebookProgress:
    """Execute the notebook at ``path`` in a fresh kernel and read the verdicts of its checks."""
    nb = _execute(path, timeout)
    texts, errors = [], []
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                texts.append(out.get("text", ""))
            elif out.get("output_type") == "error":
                errors.append(f"code cell {number}: {out.get('ename')}")
            for mime, value in (out.get("data") or {}).items():
                if mime == "text/plain":
                    texts.append(value if isinstance(value, str) else "".join(value))
    found = verdicts_in(texts)
    prefix = path.name[:2] + "."
    ids = [e.id for e in list_exercises(prefix)] or sorted(found)
    result = NotebookProgress(path, errors=errors)
    for ex_id in ids:
        result.status[ex_id] = _status(found.get(ex_id))
    return result


def _titles() -> dict[str, str]:
    return {e.id: e.title for e in list_exercises()}


def format_table(results: list[NotebookProgress]) -> str:
    """The progress table, one line per exercise, and a summary line."""
    titles = _titles()
    lines = [f"{'notebook':<34} {'exercise':<9} {'status':<12} title"]
    total = passed = 0
    for result in results:
        for ex_id, status in result.status.items():
            lines.append(f"{result.path.name:<34} {ex_id:<9} {status:<12} {titles.get(ex_id, '')}")
            total += 1
            passed += status == "passes"
        for error in result.errors:
            lines.append(f"{result.path.name:<34} {'':<9} {'(error)':<12} {error} raised an error")
    lines.append(f"{passed} of {total} exercises pass")
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
        results.append(notebook_progress(path, args.timeout))
    print(format_table(results))
    return 0 if all(s == "passes" for r in results for s in r.status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
