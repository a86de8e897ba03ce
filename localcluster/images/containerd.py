"""Importing built images into containerd (``ctr``), sending only the blobs it lacks.

``load`` builds what is missing and imports; ``import_images`` skips an image whose reference
already points at the built manifest digest, and otherwise streams a thin archive (the blobs
containerd has left out) to ``ctr images import -``. Called by ``python -m localcluster images
load``, by ``cluster.py`` when the real node comes up and by ``bench/images.py``.
"""

from __future__ import annotations

import subprocess
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

from localcluster.images.builder import BuiltImage, build, select_names
from localcluster.images.host import ImageError, Out, mb, need_tool, run
from localcluster.images.oci import COPY_BUFFER
from localcluster.images.recipes import REFS, REGISTRY, REPOSITORY


def _ctr(socket: Path, namespace: str) -> list[str]:
    return [need_tool("ctr", "containerd"), "--address", str(socket), "-n", namespace]


def containerd_images(socket: Path, namespace: str = "k8s.io") -> dict[str, str]:
    """{reference: target digest} of the images containerd has in ``namespace``."""
    proc = subprocess.run([*_ctr(socket, namespace), "images", "ls"], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        raise ImageError(f"cannot list containerd's images at {socket}: "
                         f"{proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    have = {}
    for line in proc.stdout.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 3:
            have[cols[0]] = cols[2]
    return have


def containerd_blobs(socket: Path, namespace: str = "k8s.io") -> set[str]:
    """Digests of the blobs in containerd's content store (``ctr content ls``)."""
    proc = subprocess.run([*_ctr(socket, namespace), "content", "ls", "-q"], capture_output=True,
                          text=True, check=False)
    return set(proc.stdout.split()) if proc.returncode == 0 else set()


def write_thin_archive(archive: Path, have: set[str], dest: BinaryIO) -> int:
    """Copy ``archive`` to ``dest`` leaving out the blobs in ``have``; returns bytes left out.

    containerd's importer stores the blobs it is given and reads the others from its content
    store, so after a code change only the new top layer, config and manifest travel.
    """
    skipped = 0
    with tarfile.open(archive, "r:") as src, \
            tarfile.open(fileobj=dest, mode="w|", format=tarfile.PAX_FORMAT) as out:
        src.copybufsize = out.copybufsize = COPY_BUFFER  # type: ignore[attr-defined]
        for m in src:
            blob = m.name.split("blobs/sha256/", 1)
            if len(blob) == 2 and m.isreg() and f"sha256:{blob[1]}" in have:
                skipped += m.size
                continue
            out.addfile(m, src.extractfile(m) if m.isreg() else None)
    return skipped


def _ctr_import(socket: Path, namespace: str, img: BuiltImage, have: set[str], out: Out) -> None:
    """Import ``img``'s archive, sending only the blobs containerd lacks (the whole on failure)."""
    if have:
        cmd = [*_ctr(socket, namespace), "images", "import", "-"]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            skipped = write_thin_archive(img.archive, have, proc.stdin)  # type: ignore[arg-type]
            proc.stdin.close()
        except BrokenPipeError:
            skipped = 0
        text = proc.stdout.read().decode(errors="replace")
        if proc.wait() == 0:
            if skipped:
                out(f"==> image {img.name}: {mb(skipped)} of layers already in containerd")
            return
        out(f"==> image {img.name}: partial import failed ({text.strip()[-200:]}); "
            "importing the whole archive")
    run([*_ctr(socket, namespace), "images", "import", img.archive],
        f"ctr images import {img.archive.name}")


def remove_stale_images(socket: Path, namespace: str = "k8s.io", out: Out = print) -> list[str]:
    """Remove this project's images (``docker.io/modelservice/...``) that no recipe makes any
    more, such as the single ``model-server`` image of 0.1.0 (12 GB with its snapshots);
    containerd then collects their content. Returns the references removed."""
    prefix = f"{REGISTRY}/{REPOSITORY}/"
    stale = sorted(ref for ref in containerd_images(socket, namespace)
                   if ref.startswith(prefix) and ref not in REFS.values())
    for ref in stale:
        run([*_ctr(socket, namespace), "images", "rm", "--sync", ref], f"ctr images rm {ref}")
        out(f"==> images: removed {ref} from containerd (no recipe makes that image any more)")
    return stale


def _check_socket(socket: Path) -> None:
    if not socket.is_socket():
        raise ImageError(f"no containerd socket at {socket}: start the cluster's node first "
                         "(python -m localcluster up)")


def import_images(socket: Path, names: Iterable[str] | None = None, namespace: str = "k8s.io",
                  out: Out = print, built: dict[str, BuiltImage] | None = None) -> list[str]:
    """Import the images' archives into containerd; returns the names actually imported.

    An image whose reference already points at the same manifest digest is skipped. This
    project's images no recipe makes are removed first (``remove_stale_images``).
    """
    socket = Path(socket)
    _check_socket(socket)
    remove_stale_images(socket, namespace, out)
    selected = select_names(names)
    images = built if built is not None else build(selected, out)
    have = containerd_images(socket, namespace)
    imported = []
    for n in selected:
        img = images[n]
        if have.get(img.ref) == img.manifest_digest:
            out(f"==> image {n}: already in containerd ({img.manifest_digest[:19]})")
            continue
        out(f"==> image {n}: importing into containerd ({namespace}; image {mb(img.size)})")
        t0 = time.monotonic()
        _ctr_import(socket, namespace, img, containerd_blobs(socket, namespace), out)
        if containerd_images(socket, namespace).get(img.ref) != img.manifest_digest:
            raise ImageError(f"containerd did not record {img.ref} at {img.manifest_digest}")
        out(f"==> image {n}: imported in {time.monotonic() - t0:.0f} s")
        imported.append(n)
    return imported


def load(socket: Path, names: Iterable[str] | None = None, out: Out = print) -> list[str]:
    """Build what is missing, then import into the containerd at ``socket`` (images no recipe
    makes are removed from it first, so the disk never holds both generations)."""
    _check_socket(Path(socket))
    remove_stale_images(Path(socket), out=out)
    selected = select_names(names)
    return import_images(Path(socket), selected, out=out, built=build(selected, out))
