"""pyproject.toml, environment.yml and the set-up name the same packages; torch cannot drift."""
import re
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pip_requirements():
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["course"]]
    return {r.name.lower(): r for r in reqs if r.marker is None or r.marker.evaluate()}


def _conda_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    out, pip_part = {}, None
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip_part = dep["pip"]
            continue
        name, spec = re.match(r"^([A-Za-z0-9_.\-]+)\s*(.*)$", dep).groups()
        out[CONDA_NAMES.get(name, name).lower()] = spec.replace(" ", "")
    return out, pip_part


def test_environment_yml_names_the_same_packages_with_the_same_ranges():
    pip_reqs = _pip_requirements()
    conda, pip_part = _conda_requirements()
    conda.pop("python"), conda.pop("pip")
    # A package that conda-forge does not carry is installed by the pip section, with the same range.
    from_pip = [Requirement(line) for line in pip_part if line != "-e ."]
    for req in from_pip:
        assert req.name.lower() not in conda, f"{req.name} is listed twice in environment.yml"
        conda[req.name.lower()] = str(req.specifier)
    assert set(conda) == set(pip_reqs), (
        f"only in environment.yml: {sorted(set(conda) - set(pip_reqs))}; "
        f"only in pyproject.toml: {sorted(set(pip_reqs) - set(conda))}")
    for name, req in pip_reqs.items():
        assert conda[name] == str(req.specifier), f"{name}: {conda[name]!r} vs {str(req.specifier)!r}"
    assert pip_part[0] == "-e .", "environment.yml must install the package editable"


def test_python_requirement_agrees():
    conda, _ = _conda_requirements()
    assert conda["python"] == _pyproject()["project"]["requires-python"] == ">=3.10"


def test_set_up_pins_torch_inside_the_range_users_elsewhere_get():
    pins = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    torch_pin = next(r for r in pins if r.name == "torch")
    pinned = next(iter(torch_pin.specifier)).version
    assert str(torch_pin.specifier).startswith("==")
    assert _pip_requirements()["torch"].specifier.contains(pinned)
    makefile = (ROOT / "Makefile").read_text()
    assert "-c $(CONSTRAINTS)" in makefile and "CONSTRAINTS ?= constraints.txt" in makefile


def test_pytest_runs_strict_nbval_from_one_place():
    opts = _pyproject()["tool"]["pytest"]["ini_options"]
    assert "--nbval" in opts["addopts"] and "--nbval-lax" not in opts["addopts"]
    assert "--nbval-current-env" in opts["addopts"]
    assert opts["testpaths"] == ["tests", "notebooks"]
    assert (ROOT / "tests" / "nbval_sanitize.cfg").exists()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "nbval-lax" not in ci
    assert "make test" in (ROOT / "README.md").read_text()
