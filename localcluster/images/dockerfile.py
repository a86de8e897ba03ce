"""The Dockerfiles, generated from the image recipes: one per recipe that names one.

``render(recipe)`` writes the recipe as a Dockerfile for a registry build with Docker
(docs/install.md): one ``RUN`` per layer of the recipe, in its order, running the builder's
own scripts (``steps.venv_script``, ``steps.pip_requirements_script``,
``steps.package_script``), so ``docker build`` makes the layers the local builder makes and
the runtime images share their first layers in Docker's build cache too. The base is
``debian:bookworm-slim`` (the builder bootstraps bookworm with ``mmdebstrap``); a ``wheel``
stage builds the project's wheel of the image's packages, which the last layer installs;
``ENV``/``USER``/``WORKDIR``/``EXPOSE``/``LABEL``/``ENTRYPOINT``/``CMD`` are the recipe's
runtime config. ``write`` (``python -m localcluster images dockerfile``) writes every file;
tests/unit/test_localcluster_dockerfiles.py holds the committed files equal to ``render``.
"""

from __future__ import annotations

import json
from pathlib import Path

from localcluster.images import recipes as r
from localcluster.images.chroot import CHROOT_SRC
from localcluster.images.host import ImageError, Out
from localcluster.images.steps import package_script, pip_requirements_script, venv_script

BASE = f"debian:{r.DEBIAN_RELEASE}-slim"
GENERATOR = "python -m localcluster images dockerfile"
BUILD_ARGS = ("PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_ROOT_USER_ACTION=ignore", "PIP_NO_INPUT=1")
"""pip's build-time settings (the builder's chroot sets the same; not in the image)."""
WHEELS = "/wheels"
APT_INSTALL = ("apt-get update", "apt-get install -y --no-install-recommends {packages}",
               "rm -rf /var/lib/apt/lists/*")


def _run(script: str, mounts: tuple[str, ...] = ()) -> str:
    """``RUN`` of a ``sh -e`` script, one command per continued line."""
    lines = [ln for ln in script.strip().splitlines() if ln.strip()]
    head = "".join(f"--mount={m} \\\n    " for m in mounts)
    return "RUN " + head + "set -e; \\\n    " + "; \\\n    ".join(lines)


def _debian_layer() -> str:
    """What the builder's ``debian`` layer holds: the packages, the user, /mnt/models."""
    packages = " ".join(r.DEBIAN_PACKAGES)
    return _run("\n".join((
        *(c.format(packages=packages) for c in APT_INSTALL),
        f"groupadd --gid {r.UID} {r.USER_NAME}",
        f"useradd --uid {r.UID} --gid {r.UID} --no-create-home --home-dir /nonexistent "
        f"--shell /usr/sbin/nologin {r.USER_NAME}",
        f"mkdir -p {r.MODEL_MOUNT}", f"chown {r.UID}:{r.UID} {r.MODEL_MOUNT}")))


def _wheel_stage(dirs: tuple[str, ...]) -> list[str]:
    """A stage that builds the project's wheel holding only ``dirs`` (like ``steps._wheel``)."""
    out = [f"# The project's wheel holding only {', '.join(dirs)} (the image's top layer).",
           f"FROM {BASE} AS wheel",
           _run("\n".join((*(c.format(packages=" ".join(r.DEBIAN_PACKAGES)) for c in APT_INSTALL),
                           f"python3 -m venv {r.VENV}"))),
           "WORKDIR /src",
           "COPY pyproject.toml README.md constraints.txt ./"]
    out += [f"COPY {d} {d}" for d in dirs]
    # an empty operator/ is enough for the package finder (its root must exist)
    out.append(_run(f"mkdir -p operator\n{r.VENV}/bin/pip wheel --no-deps -q -w {WHEELS} ."))
    return out


def render(recipe: r.Recipe) -> str:
    """The Dockerfile of ``recipe`` (a debian, venv, pip... and package recipe)."""
    if not recipe.dockerfile:
        raise ImageError(f"image {recipe.name} has no Dockerfile")
    kinds = [s.kind for s in recipe.steps]
    if kinds[:2] != ["debian", "venv"] or kinds[-1] != "package" or set(kinds[2:-1]) - {"pip"}:
        raise ImageError(f"image {recipe.name}: a Dockerfile needs debian, venv, pip... and "
                         f"package steps, not {', '.join(kinds)}")
    cfg = recipe.config
    ref = r.image_ref(recipe.name).removeprefix(f"{r.REGISTRY}/")
    out = [
        "# syntax=docker/dockerfile:1",
        f"# GENERATED from localcluster/images/recipes.py by `{GENERATOR}`:",
        "# edit the recipe, then run that command (a unit test compares this file with it).",
        f"# Image {recipe.name}; build from the repository root (docker/BuildKit):",
        f"#   docker build -f {recipe.dockerfile} -t <registry>/{ref} .",
        "# One RUN per layer of the recipe, in its order: "
        + ", ".join(s.name for s in recipe.steps) + ".",
        "",
        *_wheel_stage(recipe.steps[-1].args),
        "",
        f"FROM {BASE}",
        "ARG " + " ".join(BUILD_ARGS),
        *(f"ENV {e}" for e in cfg.env),
    ]
    for step in recipe.steps:
        out.append(f"# layer {step.name}")
        if step.kind == "debian":
            out.append(_debian_layer())
        elif step.kind == "venv":
            out.append(_run(venv_script()))
        elif step.kind == "pip":
            out.append(_run(pip_requirements_script(step.args), (
                f"type=bind,source=constraints.txt,target={CHROOT_SRC}/constraints.txt",
                "type=cache,target=/root/.cache/pip")))
        else:
            out.append(_run(package_script("*.whl"), (
                f"type=bind,from=wheel,source={WHEELS},target={CHROOT_SRC}/wheels",)))
    if cfg.labels:
        out.append("LABEL " + " \\\n      ".join(f"{k}={json.dumps(v)}" for k, v in cfg.labels))
    if cfg.user:
        out.append(f"USER {cfg.user}")
    if cfg.workdir:
        out.append(f"WORKDIR {cfg.workdir}")
    if cfg.ports:
        out.append("EXPOSE " + " ".join(map(str, cfg.ports)))
    out.append(f"ENTRYPOINT {json.dumps(list(cfg.entrypoint))}")
    if cfg.cmd:
        out.append(f"CMD {json.dumps(list(cfg.cmd))}")
    return "\n".join(out) + "\n"


def dockerfiles() -> dict[str, str]:
    """{path relative to the repository: content} of every generated Dockerfile."""
    return {rec.dockerfile: render(rec) for rec in r.recipes().values() if rec.dockerfile}


def write(out: Out = print, repo: Path | None = None) -> list[Path]:
    """Write every generated Dockerfile into ``repo`` (default the source tree); returns the
    files that changed."""
    root = repo or r.REPO_DIR
    changed = []
    for rel, text in dockerfiles().items():
        path = root / rel
        if path.is_file() and path.read_text() == text:
            out(f"==> {rel}: unchanged")
            continue
        path.write_text(text)
        out(f"==> {rel}: written")
        changed.append(path)
    return changed
