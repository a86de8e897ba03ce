"""The image builder's recipes, references and entry points (localcluster/images/): what
each image holds, one-line errors of build/load and the CLI, the thin archive for containerd.
No root, no Debian, no containerd."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import tarfile
import tomllib
from pathlib import Path

import pytest
import yaml

from localcluster import images
from localcluster.images import containerd, oci, recipes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def msv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MSV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _read_archive(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isreg()}


def test_requirements_expand_the_projects_own_extras() -> None:
    server = recipes.requirements(["torch", "s3"])
    names = {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in server}
    assert {"torch", "transformers", "fastapi", "boto3", "pyyaml"} <= names
    assert not any(r.startswith("modelservice") for r in server)
    op = recipes.requirements(["operator"])
    op_names = {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in op}
    assert {"kopf", "kubernetes"} <= op_names and "torch" not in op_names
    with pytest.raises(images.ImageError, match="no extra 'nope'"):
        recipes.requirements(["nope"])


def test_references_match_the_operator_default_and_the_chart() -> None:
    from msv_operator import config

    for runtime, imgs in config.DEFAULT_IMAGES.items():
        assert images.REFS[f"model-server-{runtime}"] == "docker.io/" + str(imgs.cpu)
    chart = yaml.safe_load((REPO / "helm/modelservice-operator/Chart.yaml").read_text())
    values = yaml.safe_load((REPO / "helm/modelservice-operator/values.yaml").read_text())
    repo, tag = values["image"]["repository"], chart["appVersion"]
    assert images.REFS["operator"] == f"docker.io/{repo}:{tag}"
    assert set(images.REFS) == set(images.NAMES) == set(recipes.recipes())
    moto = [ln for ln in (REPO / "constraints.txt").read_text().splitlines()
            if ln.startswith("moto==")]
    assert moto, "moto must be pinned in constraints.txt for the model-store image"


def test_images_match_the_dockerfiles_runtime_settings() -> None:
    r = recipes.recipes()
    for runtime in ("torch", "tensorflow"):
        dockerfile = (REPO / f"model_server/Dockerfile.{runtime}").read_text()
        ms = r[f"model-server-{runtime}"].config
        assert ms.entrypoint == ("model-server",) and ms.cmd == ("serve",)
        assert ms.user == "10001:10001" and ms.workdir == "/tmp"
        for env in ms.env:
            assert f"ENV {env}\n" in dockerfile
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
        diff_id, size = oci.write_layer_tar(src, tmp_path / f"{name}.tar")
        layers.append(oci.LayerBlob(name, tmp_path / f"{name}.tar", diff_id, size))
    full = tmp_path / "img.tar"
    digest = oci.write_oci_archive(full, images.image_ref("operator"), layers,
                                      oci.ImageConfig(entrypoint=("msv-operator",)))
    with open(tmp_path / "thin.tar", "wb") as f:
        skipped = containerd.write_thin_archive(full, {layers[0].diff_id, "sha256:" + "0" * 64}, f)
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
        msv_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Narrow error paths: this machine runs as root with the tools installed.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(images.ImageError, match=r"needs root .* run .* as root"):
        images.build(["model-store"], out=lambda _: None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda _: None)
    with pytest.raises(images.ImageError, match=r"^mmdebstrap is not installed: "
                                                r"apt-get install mmdebstrap$"):
        images.build(["model-store"], out=lambda _: None)
    with pytest.raises(images.ImageError, match=r"^gcc is not installed: apt-get install gcc"):
        images.build(["pause"], out=lambda _: None)


def test_shared_packages_go_into_the_model_server_and_operator_images(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def packages() -> dict[str, list[str]]:
        return {n: [d for s in r.steps if s.kind == "package" for d in s.args]
                for n, r in recipes.recipes().items()}

    assert recipes.SHARED_PACKAGES == ("msv_contract",)
    got = packages()
    servers = [n for n in got if n.startswith("model-server-")]
    assert servers == ["model-server-torch", "model-server-tensorflow"]
    for n in servers:
        assert got[n] == ["model_server", "msv_contract"]
    assert got["operator"] == ["operator/msv_operator", "msv_contract"]
    assert got["gateway"] == ["localcluster"]  # it runs localcluster.gateway only
    assert not any(got[n] for n in got if n not in (*servers, "operator", "gateway"))
    monkeypatch.setattr(recipes, "SHARED_PACKAGES", ())
    assert packages()["model-server-tensorflow"] == ["model_server"]
    assert packages()["operator"] == ["operator/msv_operator"]


def test_every_packaged_directory_is_a_package_the_project_wheel_finds() -> None:
    find = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]
    roots = {str(Path(w)) for w in find["where"]}
    for d in recipes.package_dirs():
        path = Path(d)
        assert (REPO / path / "__init__.py").is_file(), d
        assert str(path.parent) in roots, f"{d}: not under a packages.find root {roots}"
        assert any(fnmatch.fnmatch(path.name, p) for p in find["include"]), \
            f"{d}: add it to [tool.setuptools.packages.find] include in pyproject.toml"


def test_the_gateway_image_shares_the_operators_layers_and_adds_debians_nginx_with_lua(
) -> None:
    r = recipes.recipes()
    gw, op = r["gateway"], r["operator"]
    assert gw.steps[:3] == op.steps[:3]  # debian, venv, the operator's deps: one set of layers
    deps = {re.split(r"[<>=\[ ]", a, maxsplit=1)[0] for a in gw.steps[2].args}
    assert {"kubernetes", "prometheus-client"} <= deps
    assert [(s.name, s.kind, s.args) for s in gw.steps[3:]] == [
        ("nginx", "apt", ("nginx", "libnginx-mod-http-lua")),  # the lua module: retry budget
        ("localcluster", "package", ("localcluster",))]
    assert gw.config.entrypoint == ("/opt/venv/bin/python", "-m", "localcluster.gateway")
    assert gw.config.user == "10001:10001" and 80 in gw.config.ports
    assert gw.dockerfile == ""  # a local-cluster image: no registry Dockerfile
    assert images.REFS["gateway"] == "docker.io/modelservice/gateway:0.1.0"


def test_an_apt_step_starts_no_service_and_keys_its_packages() -> None:
    from localcluster.images import steps

    script = steps.apt_script(("nginx",))
    assert "exit 101" in script and "policy-rc.d" in script  # no service starts meanwhile
    assert "--no-install-recommends nginx" in script
    assert "rm -f /usr/sbin/policy-rc.d /etc/nginx/sites-enabled/default" in script
    assert "/var/lib/apt/lists/*" in script
    one = steps.step_key(recipes.Step("x", "apt", ("nginx",)), "p")
    assert one != steps.step_key(recipes.Step("x", "apt", ("nginx", "curl")), "p")
    assert one == steps.step_key(recipes.Step("y", "apt", ("nginx",)), "p")
