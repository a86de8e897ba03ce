"""The control-plane build: idempotence stamps and failures that name module, version and retry."""

from __future__ import annotations

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
