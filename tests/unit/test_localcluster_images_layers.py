"""The layer cache and the step keys (localcluster/images/cache.py, steps.py): keys chain to
the parent and follow the inputs, a layer is built once per key, unused layers are pruned.
No root, no Debian."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from localcluster import images, paths
from localcluster.images import builder, cache, recipes, steps

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def msv_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MSV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_layer_keys_chain_to_the_parent_and_follow_inputs() -> None:
    k = cache.layer_key("p", "pip", "constraints A", "torch")
    assert k == cache.layer_key("p", "pip", "constraints A", "torch")
    assert k != cache.layer_key("q", "pip", "constraints A", "torch")
    assert k != cache.layer_key("p", "pip", "constraints B", "torch")
    assert k != cache.layer_key("p", "pip", "constraints A", "torch", "moto")
    # inputs are length-prefixed: moving a boundary changes the key
    assert cache.layer_key("p", "x", "ab", "c") != cache.layer_key("p", "x", "a", "bc")


def test_files_digest_ignores_bytecode_and_sees_source_changes(tmp_path: Path) -> None:
    (tmp_path / "pkg/__pycache__").mkdir(parents=True)
    (tmp_path / "pkg/mod.py").write_text("x = 1\n")
    d = cache.files_digest(tmp_path / "pkg")
    (tmp_path / "pkg/__pycache__/mod.cpython-311.pyc").write_bytes(b"junk")
    assert cache.files_digest(tmp_path / "pkg") == d
    (tmp_path / "pkg/mod.py").write_text("x = 2\n")
    assert cache.files_digest(tmp_path / "pkg") != d


def test_layer_cache_builds_once_per_key(msv_cache: Path) -> None:
    calls: list[str] = []
    lines: list[str] = []

    def make(content: str) -> Callable[[Path], None]:
        def _make(rootfs: Path) -> None:
            calls.append(content)
            rootfs.mkdir()
            (rootfs / "f").write_text(content)
        return _make

    first = cache.get_layer("app", "k1", make("one"), lines.append, "image t")
    again = cache.get_layer("app", "k1", make("one"), lines.append, "image t")
    other = cache.get_layer("app", "k2", make("two"), lines.append, "image t")
    assert calls == ["one", "two"]
    assert not first.cached and again.cached and not other.cached
    assert again.diff_id == first.diff_id != other.diff_id
    assert (again.rootfs / "f").read_text() == "one"
    assert first.path.parent == paths.images_dir() / "layers" / "k1"
    assert "==> image t: layer app (building)" in lines
    assert "==> image t: layer app (cached)" in lines


def test_failed_layer_leaves_nothing_in_the_cache(msv_cache: Path) -> None:
    def boom(rootfs: Path) -> None:
        rootfs.mkdir()
        raise images.ImageError("step failed")

    with pytest.raises(images.ImageError):
        cache.get_layer("app", "k1", boom, lambda _: None, "image t")
    assert cache.cached_layer("app", "k1") is None
    assert list((paths.images_dir() / "layers").iterdir()) == []


def test_a_code_change_changes_only_the_top_layer_key(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    (repo / "model_server").mkdir(parents=True)
    (repo / "msv_contract").mkdir()
    (repo / "msv_contract/__init__.py").write_text("")
    for f in ("pyproject.toml", "README.md", "constraints.txt"):
        (repo / f).write_bytes((REPO / f).read_bytes())
    (repo / "model_server/cli.py").write_text("def main(): pass\n")
    monkeypatch.setattr(recipes, "REPO_DIR", repo)
    ms_steps = recipes.recipes()["model-server-torch"].steps

    def keys() -> list[str]:
        out, parent = [], ""
        for s in ms_steps:
            parent = steps.step_key(s, parent)
            out.append(parent)
        return out

    before = keys()
    (repo / "model_server/cli.py").write_text("def main(): return 0\n")
    after = keys()
    assert [s.name for s in ms_steps] == ["debian", "venv", "server-deps", "torch", "model_server"]
    assert before[:-1] == after[:-1] and before[-1] != after[-1]
    (repo / "constraints.txt").write_text("torch==0.0.1\n")
    assert keys()[2] != after[2] and keys()[1] == after[1]


def test_prune_removes_only_layers_no_current_recipe_uses(msv_cache: Path) -> None:
    root = cache.layers_dir()
    current = sorted(builder.current_layer_keys())
    assert current, "every image has layers"
    for name in (current[0], "stale-torch-layer", ".in-progress-build"):
        (root / name / "rootfs").mkdir(parents=True)
        (root / name / "layer.tar").write_bytes(b"x" * 1000)
    lines: list[str] = []
    freed = builder.prune_layers(lines.append)
    assert freed == 1000
    assert sorted(p.name for p in root.iterdir()) == [".in-progress-build", current[0]]
    assert lines and "removed cached layers" in lines[0]


def test_the_key_scheme_is_stable() -> None:
    # A changed hashing scheme re-keys every cached layer: the next build starts cold (GBs).
    assert cache.layer_key("parent", "pip", "constraints A", b"torch") == \
        "fd72016b1373baa065a2c4cbe6c7e9ca"


def test_a_package_step_keys_each_of_its_directories(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    for pkg in ("pkg_a", "pkg_b"):
        (repo / pkg).mkdir(parents=True)
        (repo / pkg / "__init__.py").write_text(f"NAME = {pkg!r}\n")
    (repo / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (repo / "README.md").write_text("x\n")
    monkeypatch.setattr(recipes, "REPO_DIR", repo)
    one = recipes.Step("app", "package", ("pkg_a",))
    both = recipes.Step("app", "package", ("pkg_a", "pkg_b"))
    # one directory: the key the single-package step always had (a warm cache stays warm)
    assert steps.step_key(one, "p") == cache.layer_key(
        "p", "package", b"[project]\nname = 'x'\n", b"x\n", "pkg_a",
        cache.files_digest(repo / "pkg_a"))
    k_one, k_both = steps.step_key(one, "p"), steps.step_key(both, "p")
    assert k_both != k_one
    (repo / "pkg_b" / "__init__.py").write_text("NAME = 'changed'\n")
    assert steps.step_key(one, "p") == k_one and steps.step_key(both, "p") != k_both


def test_one_wheel_holds_every_directory_of_a_package_step(tmp_path: Path) -> None:
    whl = steps._wheel([REPO / "model_server", REPO / "operator" / "msv_operator"], tmp_path)
    with zipfile.ZipFile(whl) as z:
        tops = {n.split("/", 1)[0] for n in z.namelist() if "/" in n}
    assert {"model_server", "msv_operator"} <= tops
    assert "localcluster" not in tops
