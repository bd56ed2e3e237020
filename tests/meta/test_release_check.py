"""The CI release check (``.ci/check_versions.py``) refuses inconsistent releases."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / ".ci" / "check_versions.py"
MEMBERS = ("aimz-core", "aimz-io", "aimz-mlflow", "aimz")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the files the check reads: pyprojects, changelogs, the meta window."""
    for member in MEMBERS:
        target = tmp_path / "packages" / member
        target.mkdir(parents=True)
        for name in ("pyproject.toml", "CHANGELOG.md"):
            shutil.copy(ROOT / "packages" / member / name, target / name)
    init = tmp_path / "packages" / "aimz" / "src" / "aimz" / "__init__.py"
    init.parent.mkdir(parents=True)
    shutil.copy(ROOT / "packages" / "aimz" / "src" / "aimz" / "__init__.py", init)
    return tmp_path


def run_check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=60
    )


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_workspace_passes() -> None:
    result = run_check(ROOT)
    assert result.returncode == 0, result.stderr
    assert "agree" in result.stdout


def test_version_bump_without_changelog_entry_fails(tree: Path) -> None:
    pyproject = tree / "packages" / "aimz-core" / "pyproject.toml"
    edit(pyproject, 'version = "0.1.0"', 'version = "0.1.1"')
    # The meta-package and io still accept 0.1.1, so only the changelog is wrong.
    result = run_check(tree)
    assert result.returncode == 1
    assert "aimz-core: pyproject version is 0.1.1 but the top CHANGELOG.md entry" in result.stderr


def test_changelog_entry_below_the_top_fails(tree: Path) -> None:
    changelog = tree / "packages" / "aimz-io" / "CHANGELOG.md"
    edit(changelog, "## 0.1.0", "## 0.2.0 (unreleased)\n\n- next\n\n## 0.1.0")
    result = run_check(tree)
    assert result.returncode == 1
    assert "aimz-io: pyproject version is 0.1.0 but the top CHANGELOG.md entry is 0.2.0" in (
        result.stderr
    )


def test_meta_window_disagreeing_with_dependency_fails(tree: Path) -> None:
    pyproject = tree / "packages" / "aimz" / "pyproject.toml"
    edit(pyproject, '"aimz-io>=0.1,<0.2",', '"aimz-io>=0.1,<0.3",')
    result = run_check(tree)
    assert result.returncode == 1
    assert "aimz (dependencies): aimz-io<0.3,>=0.1 disagrees with the compatibility window" in (
        result.stderr
    )


def test_meta_window_disagreeing_with_an_extra_fails(tree: Path) -> None:
    pyproject = tree / "packages" / "aimz" / "pyproject.toml"
    edit(pyproject, '"aimz-core[gpu]>=0.1,<0.2"', '"aimz-core[gpu]>=0.1"')
    result = run_check(tree)
    assert result.returncode == 1
    assert "aimz (extra 'gpu'): aimz-core[gpu]>=0.1 has no upper bound" in result.stderr
    assert "disagrees with the compatibility window" in result.stderr


def test_sibling_range_excluding_current_version_fails(tree: Path) -> None:
    pyproject = tree / "packages" / "aimz-core" / "pyproject.toml"
    edit(pyproject, 'version = "0.1.0"', 'version = "0.2.0"')
    changelog = tree / "packages" / "aimz-core" / "CHANGELOG.md"
    edit(changelog, "## 0.1.0", "## 0.2.0\n\n- breaking\n\n## 0.1.0")
    result = run_check(tree)
    assert result.returncode == 1
    assert (
        "aimz-io (dependencies): aimz-core<0.2,>=0.1 excludes the workspace's aimz-core 0.2.0"
        in (result.stderr)
    )
