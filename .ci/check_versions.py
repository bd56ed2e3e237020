"""Release consistency check for the workspace's independently versioned distributions.

Fails (exit status 1, one line per problem) when:

* a distribution's ``version`` in ``packages/<dist>/pyproject.toml`` differs from the
  version of the top ``## <version>`` entry of its ``CHANGELOG.md``;
* a sibling range (``aimz-core>=0.1,<0.2`` and the like, extras included) excludes the
  sibling's current version, or has no upper bound;
* the meta-package's compatibility window (``_COMPATIBLE`` in
  ``packages/aimz/src/aimz/__init__.py``) and its dependency ranges on the parts
  disagree, for the plain dependencies and for every extra.

Usage: ``python .ci/check_versions.py [ROOT]`` (ROOT defaults to the repository root).
Needs only the standard library and ``packaging`` (present wherever pip is).
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

MEMBERS = ("aimz-core", "aimz-io", "aimz-mlflow", "aimz")
TOP_ENTRY = re.compile(r"^##\s+\[?(?P<version>[^\s\]]+)\]?", re.MULTILINE)


def _project(root: Path, member: str) -> dict:
    path = root / "packages" / member / "pyproject.toml"
    return tomllib.loads(path.read_text(encoding="utf-8"))["project"]


def _requirements(meta: dict) -> list[tuple[str, Requirement]]:
    found = [("dependencies", Requirement(line)) for line in meta.get("dependencies", [])]
    for extra, lines in meta.get("optional-dependencies", {}).items():
        found += [(f"extra {extra!r}", Requirement(line)) for line in lines]
    return found


def _compatible_window(root: Path) -> dict[str, tuple[str, str]]:
    source = (root / "packages" / "aimz" / "src" / "aimz" / "__init__.py").read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            names = {t.id for t in targets if isinstance(t, ast.Name)}
            if "_COMPATIBLE" in names and node.value is not None:
                return ast.literal_eval(node.value)
    raise LookupError("packages/aimz/src/aimz/__init__.py defines no _COMPATIBLE window")


def check(root: Path) -> list[str]:
    """Return one message per inconsistency found under ``root`` (empty when all agree)."""
    problems: list[str] = []
    versions: dict[str, Version] = {}
    for member in MEMBERS:
        meta = _project(root, member)
        version = Version(meta["version"])
        versions[member] = version
        changelog = (root / "packages" / member / "CHANGELOG.md").read_text(encoding="utf-8")
        top = TOP_ENTRY.search(changelog)
        if top is None:
            problems.append(f"{member}: CHANGELOG.md has no '## <version>' entry")
        elif Version(top["version"]) != version:
            problems.append(
                f"{member}: pyproject version is {version} but the top CHANGELOG.md entry "
                f"is {top['version']}; add a '## {version}' entry at the top"
            )
    for member in MEMBERS:
        for where, req in _requirements(_project(root, member)):
            if req.name not in versions:
                continue
            if not any(spec.operator.startswith("<") for spec in req.specifier):
                problems.append(f"{member} ({where}): {req} has no upper bound")
            if not req.specifier.contains(versions[req.name], prereleases=True):
                problems.append(
                    f"{member} ({where}): {req} excludes the workspace's "
                    f"{req.name} {versions[req.name]}"
                )
    window = {
        name: SpecifierSet(f">={low},<{high}")
        for name, (low, high) in _compatible_window(root).items()
    }
    for where, req in _requirements(_project(root, "aimz")):
        if req.name in versions and req.name != "aimz" and req.name not in window:
            problems.append(f"aimz ({where}): {req.name} is required but not in _COMPATIBLE")
        elif req.name in window and req.specifier != window[req.name]:
            problems.append(
                f"aimz ({where}): {req} disagrees with the compatibility window "
                f"{req.name}{window[req.name]} in aimz/__init__.py"
            )
    required = {req.name for _, req in _requirements(_project(root, "aimz"))}
    problems += [
        f"aimz: _COMPATIBLE names {name}, which packages/aimz/pyproject.toml does not require"
        for name in sorted(set(window) - required)
    ]
    return problems


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    problems = check(root)
    for line in problems:
        print(f"version check: {line}", file=sys.stderr)
    if not problems:
        print("version check: versions, changelogs and ranges agree")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
