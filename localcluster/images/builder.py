"""Building images: every layer of a recipe from the cache (or made), then the OCI archive.

``build`` builds the named images (default: all) into ``$MSV_CACHE/images/<name>-0.1.0.oci.tar``
and then removes cached layers no current recipe uses (``prune_layers``); layers shared by
several images are made once per run. Called by ``python -m localcluster images build``, by
``containerd.load`` and by ``bench/images.py``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from localcluster import paths
from localcluster.images.cache import BuiltLayer, get_layer, layers_dir, remove_unused
from localcluster.images.host import ImageError, Out, mb
from localcluster.images.oci import write_oci_archive
from localcluster.images.recipes import NAMES, REFS, TAG, recipes
from localcluster.images.steps import layer_maker, step_key


@dataclass
class BuiltImage:
    name: str
    ref: str
    archive: Path
    manifest_digest: str
    layers: list[BuiltLayer] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


def archive_path(name: str) -> Path:
    return paths.images_dir() / f"{name}-{TAG}.oci.tar"


def build_image(name: str, out: Out = print,
                layer_memo: dict[str, BuiltLayer] | None = None) -> BuiltImage:
    """Build (or reuse) every layer of ``name`` and write its OCI archive."""
    if name not in NAMES:
        raise ImageError(f"unknown image {name!r}; known: {', '.join(NAMES)}")
    recipe = recipes()[name]
    memo = {} if layer_memo is None else layer_memo
    label = f"image {name}"
    built: list[BuiltLayer] = []
    parent = ""
    for step in recipe.steps:
        key = step_key(step, parent)
        if key in memo:
            layer = memo[key]
            out(f"==> {label}: layer {step.name} (cached)")
        else:
            lowers = [b.rootfs for b in reversed(built)]
            layer = get_layer(step.name, key, layer_maker(step, lowers, name), out, label)
            memo[key] = layer
        built.append(layer)
        parent = key
    history = [f"localcluster images: {s.kind} {s.name} {' '.join(s.args)}".strip()
               for s in recipe.steps]
    archive = archive_path(name)
    t0 = time.monotonic()
    digest = write_oci_archive(archive, REFS[name], built, recipe.config, history)
    out(f"==> {label}: {REFS[name]} {digest[:19]} ({mb(sum(b.size for b in built))}, "
        f"archive {archive.name}, {time.monotonic() - t0:.0f} s)")
    return BuiltImage(name=name, ref=REFS[name], archive=archive, manifest_digest=digest,
                      layers=built)


def select_names(names: Iterable[str] | None) -> list[str]:
    selected = list(names) if names else list(NAMES)
    unknown = [n for n in selected if n not in NAMES]
    if unknown:
        raise ImageError(f"unknown image {', '.join(unknown)}; known: {', '.join(NAMES)}")
    return selected


def build(names: Iterable[str] | None = None, out: Out = print) -> dict[str, BuiltImage]:
    """Build the named images (default: all); unchanged layers come from the cache, and
    cached layers no current recipe uses any more are removed (``prune_layers``) before the
    build (the disk holds one generation of the big framework layers, not two) and after."""
    prune_layers(out)
    memo: dict[str, BuiltLayer] = {}
    built = {n: build_image(n, out, memo) for n in select_names(names)}
    prune_layers(out)
    return built


def current_layer_keys() -> set[str]:
    """The cache keys of every layer of every image as the sources stand now."""
    keys = set()
    for recipe in recipes().values():
        parent = ""
        for step in recipe.steps:
            try:
                parent = step_key(step, parent)
            except ImageError:  # a Go binary not built yet: its layer has no key to keep
                break
            keys.add(parent)
    return keys


def prune_layers(out: Out = print) -> int:
    """Remove cached layers that no current recipe uses (an old torch layer is ~11 GB with
    its rootfs) and the archives of images no recipe makes any more (the single
    ``model-server`` image of 0.1.0: 6 GB); returns the bytes freed. Directories of builds in
    progress are left alone."""
    freed = remove_stale_archives(out)
    if not layers_dir().is_dir():
        return freed
    return freed + remove_unused(current_layer_keys(), out)


def remove_stale_archives(out: Out = print) -> int:
    """Remove ``<name>-<tag>.oci.tar`` (and its digest file) of every name not in NAMES."""
    root = paths.images_dir()
    if not root.is_dir():
        return 0
    current = {archive_path(n).name for n in NAMES}
    freed = 0
    for f in root.glob(f"*-{TAG}.oci.tar"):
        if f.name in current or not f.is_file():
            continue
        freed += f.stat().st_size
        f.unlink()
        f.with_name(f.name + ".digest").unlink(missing_ok=True)
        out(f"==> images: removed {f.name} (no recipe makes that image any more)")
    return freed
