"""Packaging checks that need no Docker engine: Dockerfiles and the constraints file.

No engine runs here, so the images are kept correct by reading; these tests read for the
mistakes that reading misses: a COPY or bind mount of a file that is not in the repository, a
final stage that runs as root, an install not held to constraints.txt, a dependency added to
pyproject.toml but never locked. The Dockerfiles are generated from the image recipes
(localcluster/images/dockerfile.py); tests/unit/test_localcluster_dockerfiles.py holds the
committed files equal to the generator.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from localcluster.images import dockerfile

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = [ROOT / rel for rel in dockerfile.dockerfiles()]


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


def test_the_images_with_dockerfiles_are_there() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCKERFILES}
    assert {"operator/Dockerfile", "model_server/Dockerfile.torch",
            "model_server/Dockerfile.tensorflow"} <= names
    for path in DOCKERFILES:
        assert path.is_file(), (
            f"{path.relative_to(ROOT)}: run python -m localcluster images dockerfile")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_copied_path_exists_in_the_repository(dockerfile: Path) -> None:
    for op, args in _instructions(dockerfile):
        if op == "COPY" and "--from=" not in args:
            *sources, _dest = args.split()
            for src in sources:
                assert (ROOT / src).exists(), (
                    f"{dockerfile.name}: COPY {src} is not in the repository")
        if op == "RUN":
            for mount in re.findall(r"--mount=(\S+)", args):
                opts = dict(kv.split("=", 1) for kv in mount.split(","))
                if opts.get("type") == "bind" and "from" not in opts:
                    assert (ROOT / opts["source"]).exists(), f"{dockerfile.name}: {mount}"


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
    """Every pip run that resolves dependencies is held to the repository's constraints.txt
    (only the project's own wheel goes in with --no-deps)."""
    resolving = 0
    for op, args in _instructions(dockerfile):
        if op != "RUN":
            continue
        for cmd in re.findall(r"pip (?:install|wheel)\b[^;&]*", args):
            if "--no-deps" in cmd or re.fullmatch(r"pip install -q \S+ pip==[\d.]+ *", cmd):
                continue
            resolving += 1
            found = re.search(r"-c (\S+)", cmd)
            assert found, f"{dockerfile.name}: {cmd!r} is not constrained"
            assert found.group(1).endswith("constraints.txt"), cmd
            assert f"source=constraints.txt,target={found.group(1)}" in args, (
                f"{dockerfile.name}: {found.group(1)} is not the repository's constraints.txt")
    assert resolving, f"{dockerfile.name}: installs no dependencies?"


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
