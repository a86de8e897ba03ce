"""The image builder's pure parts: OCI layout (digests, diff_ids, annotations), layer tars,
cache keys and the layer cache, recipes and references. No root, no Debian, no containerd."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from localcluster import images, paths

REPO = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MSV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_layer_tar_digest_is_the_sha256_of_its_bytes_and_is_deterministic(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    diff_id, size = images.write_layer_tar(src, tmp_path / "a.tar")
    data = (tmp_path / "a.tar").read_bytes()
    assert diff_id == _sha(data) and size == len(data)
    assert images.write_layer_tar(src, tmp_path / "b.tar") == (diff_id, size)
    (src / "opt/venv/data.txt").write_bytes(b"y" * 5000)
    assert images.write_layer_tar(src, tmp_path / "c.tar")[0] != diff_id


def test_layer_tar_keeps_modes_links_and_parents_first(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    images.write_layer_tar(src, tmp_path / "a.tar")
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
    os.setxattr(src / "opaque", images.OPAQUE_XATTR, b"y")
    images.write_layer_tar(src, tmp_path / "a.tar")
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
        diff_id, size = images.write_layer_tar(src, tmp_path / f"{name}.tar")
        layers.append(images.LayerBlob(name, tmp_path / f"{name}.tar", diff_id, size))
    cfg = images.ImageConfig(entrypoint=("model-server",), cmd=("serve",),
                             env=("A=1",), user="10001:10001", workdir="/tmp", ports=(8080,))
    ref = images.image_ref("model-server")
    digest = images.write_oci_archive(tmp_path / "img.tar", ref, layers, cfg)
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
    assert all(la["mediaType"] == images.MT_LAYER for la in m["layers"])
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
    diff_id, size = images.write_layer_tar(src, tmp_path / "l.tar")
    layer = images.LayerBlob("l", tmp_path / "l.tar", diff_id, size)
    cfg = images.ImageConfig(entrypoint=("/pause",))
    out = tmp_path / "img.tar"
    d1 = images.write_oci_archive(out, images.image_ref("pause"), [layer], cfg)
    mtime = out.stat().st_mtime_ns
    assert images.write_oci_archive(out, images.image_ref("pause"), [layer], cfg) == d1
    assert out.stat().st_mtime_ns == mtime
    (src / "f").write_text("2")
    diff_id2, size2 = images.write_layer_tar(src, tmp_path / "l.tar")
    d2 = images.write_oci_archive(out, images.image_ref("pause"),
                                  [images.LayerBlob("l", tmp_path / "l.tar", diff_id2, size2)], cfg)
    assert d2 != d1
    assert json.loads(_read_archive(out)["index.json"])["manifests"][0]["digest"] == d2


def test_layer_keys_chain_to_the_parent_and_follow_inputs() -> None:
    k = images.layer_key("p", "pip", "constraints A", "torch")
    assert k == images.layer_key("p", "pip", "constraints A", "torch")
    assert k != images.layer_key("q", "pip", "constraints A", "torch")
    assert k != images.layer_key("p", "pip", "constraints B", "torch")
    assert k != images.layer_key("p", "pip", "constraints A", "torch", "moto")
    # inputs are length-prefixed: moving a boundary changes the key
    assert images.layer_key("p", "x", "ab", "c") != images.layer_key("p", "x", "a", "bc")


def test_files_digest_ignores_bytecode_and_sees_source_changes(tmp_path: Path) -> None:
    (tmp_path / "pkg/__pycache__").mkdir(parents=True)
    (tmp_path / "pkg/mod.py").write_text("x = 1\n")
    d = images.files_digest(tmp_path / "pkg")
    (tmp_path / "pkg/__pycache__/mod.cpython-311.pyc").write_bytes(b"junk")
    assert images.files_digest(tmp_path / "pkg") == d
    (tmp_path / "pkg/mod.py").write_text("x = 2\n")
    assert images.files_digest(tmp_path / "pkg") != d


def test_layer_cache_builds_once_per_key(cache: Path) -> None:
    calls: list[str] = []
    lines: list[str] = []

    def make(content: str) -> Callable[[Path], None]:
        def _make(rootfs: Path) -> None:
            calls.append(content)
            rootfs.mkdir()
            (rootfs / "f").write_text(content)
        return _make

    first = images.get_layer("app", "k1", make("one"), lines.append, "image t")
    again = images.get_layer("app", "k1", make("one"), lines.append, "image t")
    other = images.get_layer("app", "k2", make("two"), lines.append, "image t")
    assert calls == ["one", "two"]
    assert not first.cached and again.cached and not other.cached
    assert again.diff_id == first.diff_id != other.diff_id
    assert (again.rootfs / "f").read_text() == "one"
    assert first.path.parent == paths.images_dir() / "layers" / "k1"
    assert "==> image t: layer app (building)" in lines
    assert "==> image t: layer app (cached)" in lines


def test_failed_layer_leaves_nothing_in_the_cache(cache: Path) -> None:
    def boom(rootfs: Path) -> None:
        rootfs.mkdir()
        raise images.ImageError("step failed")

    with pytest.raises(images.ImageError):
        images.get_layer("app", "k1", boom, lambda _: None, "image t")
    assert images.cached_layer("app", "k1") is None
    assert list((paths.images_dir() / "layers").iterdir()) == []


def test_a_code_change_changes_only_the_top_layer_key(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / "model_server").mkdir(parents=True)
    for f in ("pyproject.toml", "README.md", "constraints.txt"):
        (repo / f).write_bytes((REPO / f).read_bytes())
    (repo / "model_server/cli.py").write_text("def main(): pass\n")
    monkeypatch.setattr(images, "REPO_DIR", repo)
    steps = images.recipes()["model-server"].steps

    def keys() -> list[str]:
        out, parent = [], ""
        for s in steps:
            parent = images.step_key(s, parent)
            out.append(parent)
        return out

    before = keys()
    (repo / "model_server/cli.py").write_text("def main(): return 0\n")
    after = keys()
    assert [s.name for s in steps] == ["debian", "venv", "torch", "server-deps", "model_server"]
    assert before[:-1] == after[:-1] and before[-1] != after[-1]
    (repo / "constraints.txt").write_text("torch==0.0.1\n")
    assert keys()[2] != after[2] and keys()[1] == after[1]


def test_requirements_expand_the_projects_own_extras() -> None:
    server = images.requirements(["torch", "s3"])
    names = {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in server}
    assert {"torch", "transformers", "fastapi", "boto3", "pyyaml"} <= names
    assert not any(r.startswith("modelservice") for r in server)
    op = images.requirements(["operator"])
    op_names = {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in op}
    assert {"kopf", "kubernetes"} <= op_names and "torch" not in op_names
    with pytest.raises(images.ImageError, match="no extra 'nope'"):
        images.requirements(["nope"])


def test_references_match_the_operator_default_and_the_chart() -> None:
    from msv_operator import config

    assert images.REFS["model-server"] == "docker.io/" + config.DEFAULT_IMAGE
    chart = yaml.safe_load((REPO / "helm/modelservice-operator/Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "helm/modelservice-operator/values.yaml").read_text())
    repo, tag = values["image"]["repository"], chart["appVersion"]
    assert images.REFS["operator"] == f"docker.io/{repo}:{tag}"
    assert set(images.REFS) == set(images.NAMES) == set(images.recipes())
    moto = [ln for ln in (REPO / "constraints.txt").read_text().splitlines()
            if ln.startswith("moto==")]
    assert moto, "moto must be pinned in constraints.txt for the model-store image"


def test_images_match_the_dockerfiles_runtime_settings() -> None:
    r = images.recipes()
    dockerfile = (REPO / "model_server/Dockerfile").read_text()
    ms = r["model-server"].config
    assert ms.entrypoint == ("model-server",) and ms.cmd == ("serve",)
    assert ms.user == "10001:10001" and ms.workdir == "/tmp"
    for env in ms.env[1:]:
        assert env.split("=")[0] in dockerfile
    assert r["operator"].config.entrypoint == ("msv-operator",)
    assert r["operator"].config.cmd == ("run",)
    assert not any("torch" in a for s in r["operator"].steps for a in s.args)


def test_unknown_image_and_missing_socket_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(images.ImageError, match="unknown image nope"):
        images.build(["nope"])
    with pytest.raises(images.ImageError, match=r"no containerd socket at .*c\.sock") as e:
        images.load(tmp_path / "c.sock", ["pause"])
    assert "\n" not in str(e.value)


def test_thin_archive_leaves_out_only_the_blobs_containerd_has(tmp_path: Path) -> None:
    layers = []
    for name in ("base", "top"):
        src = tmp_path / name
        src.mkdir()
        (src / f"{name}.bin").write_bytes(name.encode() * 4000)
        diff_id, size = images.write_layer_tar(src, tmp_path / f"{name}.tar")
        layers.append(images.LayerBlob(name, tmp_path / f"{name}.tar", diff_id, size))
    full = tmp_path / "img.tar"
    digest = images.write_oci_archive(full, images.image_ref("operator"), layers,
                                      images.ImageConfig(entrypoint=("msv-operator",)))
    with open(tmp_path / "thin.tar", "wb") as f:
        skipped = images.write_thin_archive(full, {layers[0].diff_id, "sha256:" + "0" * 64}, f)
    assert skipped == layers[0].size
    thin, whole = _read_archive(tmp_path / "thin.tar"), _read_archive(full)
    assert set(whole) - set(thin) == {f"blobs/sha256/{layers[0].diff_id[7:]}"}
    assert thin["index.json"] == whole["index.json"]
    assert f"blobs/sha256/{digest[7:]}" in thin
    assert f"blobs/sha256/{layers[1].diff_id[7:]}" in thin


def test_cli_load_without_a_node_is_one_line_and_exit_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from localcluster.__main__ import main

    assert main(["images", "load", "--state-dir", str(tmp_path), "pause"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: no containerd socket at {tmp_path}/containerd/containerd.sock")


def test_building_without_root_or_tools_says_what_to_do(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Narrow error paths: this machine runs as root with the tools installed.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(images.ImageError, match=r"needs root .* run .* as root"):
        images.build(["model-store"], out=lambda _: None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(images.shutil, "which", lambda _: None)
    with pytest.raises(images.ImageError, match=r"^mmdebstrap is not installed: "
                                                r"apt-get install mmdebstrap$"):
        images.build(["model-store"], out=lambda _: None)
    with pytest.raises(images.ImageError, match=r"^gcc is not installed: apt-get install gcc"):
        images.build(["pause"], out=lambda _: None)


def test_prune_removes_only_layers_no_current_recipe_uses(cache: Path) -> None:
    root = images.layers_dir()
    current = sorted(images.current_layer_keys())
    assert current, "every image has layers"
    for name in (current[0], "stale-torch-layer", ".in-progress-build"):
        (root / name / "rootfs").mkdir(parents=True)
        (root / name / "layer.tar").write_bytes(b"x" * 1000)
    lines: list[str] = []
    freed = images.prune_layers(lines.append)
    assert freed == 1000
    assert sorted(p.name for p in root.iterdir()) == [".in-progress-build", current[0]]
    assert lines and "removed cached layers" in lines[0]
