"""The OCI image layout (localcluster/images/oci.py): layer tars (digests, order, modes,
whiteouts) and image archives (digests, diff_ids, annotations). No root, no containerd."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import pytest

from localcluster import images
from localcluster.images import oci


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _tree(root: Path) -> Path:
    (root / "opt/venv/bin").mkdir(parents=True)
    (root / "opt/venv/bin/tool").write_text("#!/opt/venv/bin/python\nprint('hi')\n")
    (root / "opt/venv/bin/tool").chmod(0o755)
    (root / "opt/venv/data.txt").write_bytes(b"x" * 5000)
    os.link(root / "opt/venv/data.txt", root / "opt/venv/data-link.txt")
    (root / "opt/venv/bin/python").symlink_to("/usr/bin/python3")
    return root


def test_layer_tar_digest_is_the_sha256_of_its_bytes_and_is_deterministic(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    diff_id, size = oci.write_layer_tar(src, tmp_path / "a.tar")
    data = (tmp_path / "a.tar").read_bytes()
    assert diff_id == _sha(data) and size == len(data)
    assert oci.write_layer_tar(src, tmp_path / "b.tar") == (diff_id, size)
    (src / "opt/venv/data.txt").write_bytes(b"y" * 5000)
    assert oci.write_layer_tar(src, tmp_path / "c.tar")[0] != diff_id


def test_layer_tar_keeps_modes_links_and_parents_first(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    oci.write_layer_tar(src, tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert names.index("opt") < names.index("opt/venv") < names.index("opt/venv/bin/tool")
    by = {m.name: m for m in members}
    assert by["opt/venv/bin/tool"].mode & 0o777 == 0o755
    assert by["opt/venv/bin/python"].issym()
    assert by["opt/venv/bin/python"].linkname == "/usr/bin/python3"
    links = [m for m in members if m.islnk()]
    assert len(links) == 1 and links[0].linkname in ("opt/venv/data.txt", "opt/venv/data-link.txt")
    assert all(m.uname == "" and m.gname == "" for m in members)


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a 0/0 character device needs root")
def test_overlay_whiteouts_and_opaque_dirs_become_oci_whiteouts(tmp_path: Path) -> None:
    src = tmp_path / "upper"
    (src / "etc/gone").parent.mkdir(parents=True)
    os.mknod(src / "etc/gone", 0o600 | 0o020000, os.makedev(0, 0))
    (src / "opaque").mkdir()
    os.setxattr(src / "opaque", oci.OPAQUE_XATTR, b"y")
    oci.write_layer_tar(src, tmp_path / "a.tar")
    with tarfile.open(tmp_path / "a.tar") as tar:
        by = {m.name: m for m in tar.getmembers()}
    assert "etc/gone" not in by
    assert by["etc/.wh.gone"].isreg() and by["etc/.wh.gone"].size == 0
    assert by["opaque/.wh..wh..opq"].isreg()


def _read_archive(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isreg()}


def test_oci_archive_digests_diff_ids_and_index_annotations(tmp_path: Path) -> None:
    layers = []
    for name in ("base", "top"):
        src = tmp_path / name
        src.mkdir()
        (src / f"{name}.txt").write_text(name)
        diff_id, size = oci.write_layer_tar(src, tmp_path / f"{name}.tar")
        layers.append(oci.LayerBlob(name, tmp_path / f"{name}.tar", diff_id, size))
    cfg = oci.ImageConfig(entrypoint=("model-server",), cmd=("serve",),
                             env=("A=1",), user="10001:10001", workdir="/tmp", ports=(8080,))
    ref = images.image_ref("model-server")
    digest = oci.write_oci_archive(tmp_path / "img.tar", ref, layers, cfg)
    files = _read_archive(tmp_path / "img.tar")

    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    (desc,) = index["manifests"]
    assert desc["digest"] == digest
    assert desc["annotations"] == {
        "io.containerd.image.name": "docker.io/modelservice/model-server:0.1.0",
        "org.opencontainers.image.ref.name": "0.1.0"}
    assert desc["platform"] == {"architecture": "amd64", "os": "linux"}
    # every blob is stored under its own digest
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert _sha(data) == "sha256:" + name.rsplit("/", 1)[1]
    manifest = files[f"blobs/sha256/{digest[7:]}"]
    assert desc["size"] == len(manifest)
    m = json.loads(manifest)
    assert [la["digest"] for la in m["layers"]] == [la.diff_id for la in layers]
    assert [la["size"] for la in m["layers"]] == [la.size for la in layers]
    assert all(la["mediaType"] == oci.MT_LAYER for la in m["layers"])
    config = json.loads(files[f"blobs/sha256/{m['config']['digest'][7:]}"])
    assert config["rootfs"] == {"type": "layers", "diff_ids": [la.diff_id for la in layers]}
    assert config["config"]["Entrypoint"] == ["model-server"]
    assert config["config"]["Cmd"] == ["serve"]
    assert config["config"]["User"] == "10001:10001"
    assert config["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert len(config["history"]) == 2


def test_unchanged_archive_is_not_rewritten_and_a_changed_layer_changes_the_digest(
        tmp_path: Path) -> None:
    src = tmp_path / "l"
    src.mkdir()
    (src / "f").write_text("1")
    diff_id, size = oci.write_layer_tar(src, tmp_path / "l.tar")
    layer = oci.LayerBlob("l", tmp_path / "l.tar", diff_id, size)
    cfg = oci.ImageConfig(entrypoint=("/pause",))
    out = tmp_path / "img.tar"
    d1 = oci.write_oci_archive(out, images.image_ref("pause"), [layer], cfg)
    mtime = out.stat().st_mtime_ns
    assert oci.write_oci_archive(out, images.image_ref("pause"), [layer], cfg) == d1
    assert out.stat().st_mtime_ns == mtime
    (src / "f").write_text("2")
    diff_id2, size2 = oci.write_layer_tar(src, tmp_path / "l.tar")
    d2 = oci.write_oci_archive(out, images.image_ref("pause"),
                                  [oci.LayerBlob("l", tmp_path / "l.tar", diff_id2, size2)], cfg)
    assert d2 != d1
    assert json.loads(_read_archive(out)["index.json"])["manifests"][0]["digest"] == d2
