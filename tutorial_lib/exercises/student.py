"""Write student copies of the notebooks: solutions removed, outputs cleared.

    python -m tutorial_lib.exercises.student notebooks student      (or: make student)

In every code cell, the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` (markers
included) are replaced by a ``# YOUR CODE HERE`` line and a ``raise NotImplementedError``
at the same indentation, which ``check`` reports as "not done yet". Every output and
execution count is cleared, so the copy opens as a fresh worksheet.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

BEGIN = re.compile(r"^(\s*)# BEGIN SOLUTION\s*$")
END = re.compile(r"^\s*# END SOLUTION\s*$")


def strip_solutions(source: str) -> str:
    """Replace every solution block of one cell's source."""
    out: list[str] = []
    inside = False
    for line in source.splitlines(keepends=True):
        if not inside and (m := BEGIN.match(line)):
            indent = m.group(1)
            out.append(f"{indent}# YOUR CODE HERE\n")
            out.append(f'{indent}raise NotImplementedError("exercise: replace this line with your code")\n')
            inside = True
        elif inside and END.match(line):
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("a '# BEGIN SOLUTION' has no matching '# END SOLUTION'")
    return "".join(out)


def student_copy(nb: dict) -> dict:
    """A student version of a notebook (as parsed JSON)."""
    nb = json.loads(json.dumps(nb))
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        cell["source"] = strip_solutions(src)
        cell["outputs"] = []
        cell["execution_count"] = None
    nb.get("metadata", {}).pop("widgets", None)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with the course notebooks")
    parser.add_argument("target", type=Path, help="folder to write the student copies to")
    args = parser.parse_args(argv)
    args.target.mkdir(parents=True, exist_ok=True)
    paths = sorted(args.source.glob("*.ipynb"))
    for path in paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        (args.target / path.name).write_text(json.dumps(student_copy(nb), indent=1, ensure_ascii=False) + "\n",
                                             encoding="utf-8")
    print(f"wrote {len(paths)} student notebook(s) to {args.target}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
