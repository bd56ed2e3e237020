"""Workspace contract: four independently versioned hatchling distributions."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]

# distribution name -> import name
MEMBERS = {
    "aimz-core": "aimz_core",
    "aimz-io": "aimz_io",
    "aimz-mlflow": "aimz_mlflow",
    "aimz": "aimz",
}


def load(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def project(member: str) -> dict:
    return load(ROOT / "packages" / member / "pyproject.toml")["project"]


def all_requirements(member: str) -> list[Requirement]:
    meta = project(member)
    lines = list(meta.get("dependencies", []))
    for extra in meta.get("optional-dependencies", {}).values():
        lines += extra
    return [Requirement(line) for line in lines]


def test_workspace_lists_exactly_the_four_members() -> None:
    root = load(ROOT / "pyproject.toml")
    assert root["tool"]["uv"]["workspace"]["members"] == ["packages/*"]
    found = {p.parent.name for p in ROOT.glob("packages/*/pyproject.toml")}
    assert found == set(MEMBERS)
    sources = root["tool"]["uv"]["sources"]
    assert {name: sources.get(name) for name in MEMBERS} == {
        name: {"workspace": True} for name in MEMBERS
    }


@pytest.mark.parametrize("member", MEMBERS)
def test_member_builds_with_hatchling_from_src_layout(member: str) -> None:
    pyproject = load(ROOT / "packages" / member / "pyproject.toml")
    build = pyproject["build-system"]
    assert build["build-backend"] == "hatchling.build"
    assert any(Requirement(r).name == "hatchling" for r in build["requires"])
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == [f"src/{MEMBERS[member]}"]
    package = ROOT / "packages" / member / "src" / MEMBERS[member]
    assert (package / "__init__.py").is_file()


@pytest.mark.parametrize("member", MEMBERS)
def test_member_has_static_version_and_python_floor(member: str) -> None:
    meta = project(member)
    assert meta["name"] == member
    assert "version" not in meta.get("dynamic", [])
    Version(meta["version"])  # a valid PEP 440 version
    requires_python = SpecifierSet(meta["requires-python"])
    assert "3.11" in requires_python
    assert "3.10" not in requires_python


@pytest.mark.parametrize("member", MEMBERS)
def test_siblings_are_required_by_compatible_ranges(member: str) -> None:
    versions = {name: Version(project(name)["version"]) for name in MEMBERS}
    for req in all_requirements(member):
        if req.name not in MEMBERS:
            continue
        operators = {spec.operator for spec in req.specifier}
        assert operators, f"{member}: {req} has no version range"
        assert not operators & {"==", "===", "~="}, f"{member}: {req} pins a sibling"
        assert "<" in operators, f"{member}: {req} has no upper bound"
        assert req.specifier.contains(versions[req.name], prereleases=True), (
            f"{member}: {req} excludes the workspace's {req.name} {versions[req.name]}"
        )


@pytest.mark.parametrize("member", MEMBERS)
def test_changelog_has_section_for_current_version(member: str) -> None:
    version = project(member)["version"]
    changelog = (ROOT / "packages" / member / "CHANGELOG.md").read_text()
    heading = re.compile(rf"^##\s+\[?{re.escape(version)}\]?(\s|$)", re.MULTILINE)
    assert heading.search(changelog), f"{member}: no '## {version}' in CHANGELOG.md"


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not on PATH")
def test_lockfile_is_up_to_date() -> None:
    result = subprocess.run(
        ["uv", "lock", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
