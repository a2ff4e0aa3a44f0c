"""What the README and docs/ tell instructors agrees with the code: the JupyterHub install, the lab plans."""
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"--quiet", "--disable-pip-version-check"}   # the Makefile's output settings, not what is installed


def _make_setup_pip(**variables):
    """The arguments of the `pip install` that `make setup` runs (make -n: printed, not run)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    args = [f"{k}={v}" for k, v in variables.items()]
    out = subprocess.run(["make", "-n", "-B", "setup", *args], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    line = next(line for line in out.splitlines() if " -m pip install " in line)
    command = line.split(" -m pip install ", 1)[1].split("2>&1")[0]
    return [arg for arg in shlex.split(command) if arg not in QUIET]


def _readme_hub_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("### A shared JupyterHub", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.startswith("pip install")]
    return [c[2:] for c in commands]


def test_the_jupyterhub_commands_are_the_set_up_s_install():
    default, cpu_only = _readme_hub_commands()
    assert default == _make_setup_pip(TORCH_CPU="")
    assert cpu_only == _make_setup_pip(TORCH_CPU="1")


def test_the_cpu_only_index_comes_with_pypi_for_the_rest():
    cpu_only = _make_setup_pip(TORCH_CPU="1")
    assert cpu_only[cpu_only.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert cpu_only[cpu_only.index("--extra-index-url") + 1] == "https://pypi.org/simple"
    assert "-c" in cpu_only and cpu_only[cpu_only.index("-c") + 1] == "constraints.txt"


def test_the_lab_plans_name_every_exercise_under_its_notebook():
    from tutorial_lib.exercises import list_exercises

    plans = (ROOT / "docs" / "lab_plans.md").read_text()
    assert "docs/lab_plans.md" in (ROOT / "README.md").read_text()
    sections = {m.group(1): m.group(2) for m in re.finditer(r"^## (\d\d) · .*?\n(.*?)(?=^## |\Z)", plans, re.S | re.M)}
    assert sorted(sections) == sorted({p.name[:2] for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")})
    for number, text in sections.items():
        named = set(re.findall(r"^\|[^|\n]+\| (\d\d\.\d+) \|", text, re.M))
        registered = {e.id for e in list_exercises(number + ".")}
        assert named == registered, (f"lab plan of {number}: exercises not in the plan {sorted(registered - named)}, "
                                     f"in the plan but not registered {sorted(named - registered)}")
