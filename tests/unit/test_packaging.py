"""Packaging checks that need no Docker engine: Dockerfiles and the constraints file.

No engine runs here, so the images are kept correct by reading; these tests read for the
mistakes that reading misses: a COPY of a file that is not in the repository, a final stage
that runs as root, a dependency added to pyproject.toml but never locked.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [
    ROOT / "operator" / "Dockerfile",
    ROOT / "model_server" / "Dockerfile",
    ROOT / "model_server" / "Dockerfile.cuda",
]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    logical: list[str] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in logical]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_copied_path_exists_in_the_repository(dockerfile: Path) -> None:
    for op, args in _instructions(dockerfile):
        if op != "COPY" or "--from=" in args:
            continue
        *sources, _dest = args.split()
        for src in sources:
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} is not in the repository"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_final_stage_runs_as_an_unprivileged_user(dockerfile: Path) -> None:
    ins = _instructions(dockerfile)
    stages = [i for i, (op, _) in enumerate(ins) if op == "FROM"]
    assert len(stages) >= 2, "multi-stage: build tools stay out of the final image"
    users = [args for op, args in ins[stages[-1]:] if op == "USER"]
    assert users, "the final stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: use a numeric non-root uid"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_images_install_with_the_constraints(dockerfile: Path) -> None:
    installs = [args for op, args in _instructions(dockerfile)
                if op == "RUN" and re.search(r"pip (install|wheel)\b.*\.\[", args)]
    assert installs
    for args in installs:
        for cmd in re.findall(r"pip (?:install|wheel)[^;&]*\.\[", args):
            assert "-c constraints.txt" in cmd, f"{dockerfile.name}: {cmd!r} is not constrained"


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_locked_in_constraints() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in reqs if not r.startswith("modelservice")}
    locked = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            locked[name.lower().replace("_", "-")] = version
    missing = sorted(wanted - set(locked))
    assert not missing, f"not in constraints.txt (run scripts/lock): {missing}"
