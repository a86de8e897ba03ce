"""The control-plane build: idempotence stamps and failures that name module, version and retry."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from localcluster import build, paths
from localcluster.versions import Component

needs_go = pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")

HELLO = 'package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("hello") }\n'


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Component:
    """A one-file wrapper module ``demo`` and an empty binary cache, both under tmp_path."""
    go_dir = tmp_path / "go"
    (go_dir / "demo").mkdir(parents=True)
    (go_dir / "demo" / "go.mod").write_text(
        "// demo wrapper requiring example.invalid/demo v1.2.3\n"
        "module example.invalid/demo\n\ngo 1.22\n"
    )
    (go_dir / "demo" / "main.go").write_text(HELLO)
    monkeypatch.setattr(paths, "GO_DIR", go_dir)
    monkeypatch.setenv("MSV_CACHE", str(tmp_path / "cache"))
    return Component(name="demo", module="example.invalid/demo", version="v1.2.3",
                     packages=(".",), binaries=("demo",))


def _go() -> tuple[str, str]:
    go = build._go()
    return go, build._go_version(go)


@needs_go
def test_second_build_is_up_to_date_and_a_source_change_rebuilds(scratch: Component) -> None:
    go, ver = _go()
    lines: list[str] = []
    assert build.build_component(scratch, go, ver, out=lines.append) is True
    binary = paths.bin_root() / "demo-v1.2.3" / "demo"
    assert binary.is_file()
    assert build.build_component(scratch, go, ver, out=lines.append) is False
    assert "up to date" in lines[-1]

    (paths.GO_DIR / "demo" / "main.go").write_text(HELLO.replace("hello", "changed"))
    assert build.build_component(scratch, go, ver, out=lines.append) is True


@needs_go
def test_failed_build_names_module_version_and_retry_command(scratch: Component) -> None:
    (paths.GO_DIR / "demo" / "main.go").write_text("package main\n\nfunc main() { oops }\n")
    go, ver = _go()
    with pytest.raises(build.BuildError) as err:
        build.build_component(scratch, go, ver, out=lambda _l: None)
    msg = str(err.value)
    assert "example.invalid/demo@v1.2.3" in msg
    assert "python -m localcluster build" in msg
    assert "undefined: oops" in msg
    assert not (paths.bin_root() / "demo-v1.2.3" / "demo").exists()


def test_wrapper_module_that_disagrees_with_the_pinned_version_is_refused(
        scratch: Component) -> None:
    wrong = Component(name="demo", module="example.invalid/demo", version="v9.9.9",
                      packages=(".",), binaries=("demo",))
    with pytest.raises(build.BuildError, match=r"does not require example\.invalid/demo v9\.9\.9"):
        build.build_component(wrong, "go", "go1", out=lambda _l: None)


def test_every_pinned_component_matches_its_wrapper_module() -> None:
    from localcluster import versions

    for c in versions.COMPONENTS:
        build._check_pin(c)  # raises on mismatch


def test_a_component_with_its_own_toolchain_builds_with_it_whatever_go_is_local(
        scratch: Component) -> None:
    pinned = dataclasses.replace(scratch, toolchain="go1.99.1")
    assert build._go_env(pinned) == {"CGO_ENABLED": "0", "GOTOOLCHAIN": "go1.99.1"}
    assert build._go_env(scratch) == {"CGO_ENABLED": "0"}
    # The stamp follows the toolchain that builds it, not the local go.
    assert build._stamp_key(pinned, "go1.26.0") == build._stamp_key(pinned, "go1.26.8")
    assert build._stamp_key(pinned, "go1.26.0") != build._stamp_key(scratch, "go1.26.0")
    assert build._stamp_key(scratch, "go1.26.0") != build._stamp_key(scratch, "go1.26.8")


def test_keda_binaries_take_upstreams_names_not_the_package_names() -> None:
    from localcluster import versions

    keda = versions.component("keda")
    assert build._outputs(keda) == [("operator", "keda"), ("adapter", "keda-adapter")]
    assert keda.toolchain == versions.KEDA_GO
    # Every binary name is one component's: paths.binary() finds each by name.
    names = [b for c in versions.COMPONENTS for b in c.binaries]
    assert len(names) == len(set(names))
    assert versions.component_of_binary("operator").name == "prometheus-operator"


@needs_go
def test_several_packages_are_built_under_their_binary_names(scratch: Component) -> None:
    for pkg in ("a", "b"):
        (paths.GO_DIR / "demo" / "cmd" / pkg).mkdir(parents=True)
        (paths.GO_DIR / "demo" / "cmd" / pkg / "main.go").write_text(HELLO)
    two = dataclasses.replace(scratch, packages=("example.invalid/demo/cmd/a",
                                                 "example.invalid/demo/cmd/b"),
                              binaries=("demo-a", "demo-b"))
    go, ver = _go()
    assert build.build_component(two, go, ver, out=lambda _l: None) is True
    target = paths.bin_root() / "demo-v1.2.3"
    assert sorted(p.name for p in target.iterdir() if p.name != build.STAMP) == [
        "demo-a", "demo-b"]
    assert build.is_built(two)
