"""environment.yml gives conda users the environment `make setup` builds: same Python, same extras, same pins."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def _environment() -> dict:
    return yaml.safe_load((REPO_ROOT / "environment.yml").read_text())


def _makefile_extras() -> list[str]:
    match = re.search(r"^EXTRAS \?= *(\S+) *$", (REPO_ROOT / "Makefile").read_text(), flags=re.MULTILINE)
    assert match, "the Makefile no longer defines EXTRAS ?= ...; update this test and environment.yml together"
    return match.group(1).split(",")


def _split_dependencies(environment: dict) -> tuple[list[str], list[str]]:
    conda, pip = [], []
    for item in environment["dependencies"]:
        if isinstance(item, dict):
            assert set(item) == {"pip"}, item
            pip.extend(item["pip"])
        else:
            conda.append(item)
    return conda, pip


def test_conda_installs_only_python_3_11_and_pip():
    # Anything else from conda could shadow a pip pin, and the environment would no longer be make setup's.
    conda, _ = _split_dependencies(_environment())
    assert conda == ["python=3.11", "pip"]


def test_python_3_11_is_allowed_by_pyproject():
    requires = _pyproject()["project"]["requires-python"]
    assert requires == ">=3.11,<3.13"  # 3.11 sits inside; if this range changes, re-check environment.yml


def test_pip_installs_this_repository_with_the_makefile_extras():
    _, pip = _split_dependencies(_environment())
    assert len(pip) == 1
    match = re.fullmatch(r"-e \.\[([a-z0-9_,-]+)\]", pip[0])
    assert match, f"expected `-e .[extras]` (what make setup runs), got {pip[0]!r}"
    assert match.group(1).split(",") == _makefile_extras()


def test_the_pins_conda_users_get_are_exactly_pyprojects_pinned_dependencies_and_extras():
    # What `-e .[dev,crf]` resolves to: the project's dependencies plus those extras, each pinned with ==.
    project = _pyproject()["project"]
    _, pip = _split_dependencies(_environment())
    extras = re.fullmatch(r"-e \.\[(.+)\]", pip[0]).group(1).split(",")
    assert set(extras) <= set(project["optional-dependencies"]), "environment.yml names an extra pyproject lacks"
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += project["optional-dependencies"][extra]
    pins = {}
    for requirement in requirements:
        pinned = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][A-Za-z0-9.]*)", requirement)
        assert pinned, f"{requirement!r} is not pinned with ==: conda and make setup could then resolve differently"
        assert pinned.group(1) not in pins, f"{pinned.group(1)} is listed twice"
        pins[pinned.group(1)] = pinned.group(2)
    # The extras really are in: the test runner and the dense CRF, beside the kit's own stack.
    assert {"tensorflow", "keras", "pytest", "pydensecrf2"} <= set(pins)
