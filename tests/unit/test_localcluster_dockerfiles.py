"""One recipe per image: the model-server images are one per runtime of the capability table,
share every layer but their framework's, carry only their own framework; the committed
Dockerfiles are exactly what the generator makes of the recipes. No root, no Docker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from localcluster.images import dockerfile, recipes, steps
from localcluster.images.host import ImageError
from msv_contract import capabilities as caps

REPO = Path(__file__).resolve().parents[2]


def _names(reqs: tuple[str, ...]) -> set[str]:
    return {re.split(r"[<>=\[ ]", r, maxsplit=1)[0].lower() for r in reqs}


def _keys(recipe: recipes.Recipe) -> list[str]:
    out, parent = [], ""
    for s in recipe.steps:
        parent = steps.step_key(s, parent)
        out.append(parent)
    return out


def test_one_model_server_image_per_runtime_of_the_table() -> None:
    all_recipes = recipes.recipes()
    servers = {n: r for n, r in all_recipes.items() if n.startswith("model-server")}
    assert set(servers) == {caps.image_name(rt) for rt in caps.RUNTIME_NAMES}
    assert set(servers) == set(recipes.RUNTIME_IMAGES)
    assert "model-server" not in recipes.NAMES  # the one image of 0.1.0 is gone
    for name, recipe in servers.items():
        runtime = recipes.RUNTIME_IMAGES[name]
        assert [s.name for s in recipe.steps] == [
            "debian", "venv", "server-deps", runtime, "model_server"], name
        assert recipe.dockerfile == f"model_server/Dockerfile.{runtime}"


def test_the_runtime_images_share_every_layer_below_their_framework() -> None:
    torch, tf = (recipes.recipes()[caps.image_name(rt)] for rt in ("torch", "tensorflow"))
    kt, kf = _keys(torch), _keys(tf)
    assert kt[:3] == kf[:3], "debian, venv and server-deps are one layer for both"
    assert kt[3] != kf[3] and kt[4] != kf[4]
    assert torch.steps[2] == tf.steps[2]
    assert _names(torch.steps[2].args) >= {"fastapi", "uvicorn", "grpcio", "boto3", "numpy"}


def test_neither_runtime_image_carries_the_other_framework() -> None:
    by_runtime = {rt: recipes.recipes()[caps.image_name(rt)] for rt in caps.RUNTIME_NAMES}
    torch_pkgs = _names(by_runtime["torch"].steps[3].args)
    tf_pkgs = _names(by_runtime["tensorflow"].steps[3].args)
    assert {"torch", "transformers", "torchao"} <= torch_pkgs
    assert tf_pkgs == {"tensorflow"}
    for recipe in by_runtime.values():
        every = _names(tuple(a for s in recipe.steps if s.kind == "pip" for a in s.args))
        assert len({"torch", "tensorflow"} & every) == 1, recipe.name
    # the framework layer holds the runtime's extra less the server's own requirements
    shared = set(recipes.requirements(recipes.SERVER_EXTRAS))
    for rt, recipe in by_runtime.items():
        extra = caps.RUNTIMES[rt].extra
        assert set(recipe.steps[3].args) == set(recipes.requirements((extra,))) - shared


def test_a_runtime_that_runs_on_cuda_gets_the_toolkits_capabilities_but_never_all_gpus() -> None:
    for rt in caps.RUNTIMES.values():
        env = recipes.recipes()[caps.image_name(rt.name)].config.env
        assert ("NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env) == ("cuda" in rt.devices)
        assert not any(e.startswith("NVIDIA_VISIBLE_DEVICES") for e in env)


def test_a_new_runtime_is_a_record_not_a_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    extra = caps.Runtime("onnx", "s3", ("cpu",))  # an existing extra stands in for its own
    monkeypatch.setitem(caps.RUNTIMES, "onnx", extra)
    recipe = recipes.runtime_recipe(extra)
    assert recipe.name == "model-server-onnx"
    assert [s.name for s in recipe.steps] == ["debian", "venv", "server-deps", "onnx",
                                              "model_server"]
    assert "model-server-onnx" in dockerfile.render(recipe)


def test_the_committed_dockerfiles_are_the_generated_ones() -> None:
    generated = dockerfile.dockerfiles()
    assert set(generated) == {"model_server/Dockerfile.torch",
                              "model_server/Dockerfile.tensorflow", "operator/Dockerfile"}
    for rel, text in generated.items():
        assert (REPO / rel).read_text() == text, (
            f"{rel} differs from its recipe: run python -m localcluster images dockerfile")
    assert not (REPO / "model_server/Dockerfile").exists()
    assert not (REPO / "model_server/Dockerfile.cuda").exists()


def test_a_dockerfile_has_one_run_per_layer_with_the_builders_scripts() -> None:
    recipe = recipes.recipes()["model-server-tensorflow"]
    text = dockerfile.render(recipe)
    final = text[text.rindex("\nFROM "):]
    layers = re.findall(r"^# layer (\S+)$", final, re.M)
    assert layers == [s.name for s in recipe.steps]
    assert final.count("\nRUN ") == len(recipe.steps)
    joined = final.replace("; \\\n    ", "\n")
    assert steps.venv_script().strip() in joined
    assert steps.pip_requirements_script(recipe.steps[3].args).strip() in joined
    assert "'torch" not in text and "transformers" not in text
    for line in recipe.config.env:
        assert f"ENV {line}\n" in final
    assert final.rstrip().endswith('ENTRYPOINT ["model-server"]\nCMD ["serve"]')


def test_write_rewrites_only_what_differs(tmp_path: Path) -> None:
    (tmp_path / "model_server").mkdir()
    (tmp_path / "operator").mkdir()
    lines: list[str] = []
    assert len(dockerfile.write(lines.append, repo=tmp_path)) == 3
    (tmp_path / "operator/Dockerfile").write_text("FROM scratch\n")
    changed = dockerfile.write(lines.append, repo=tmp_path)
    assert changed == [tmp_path / "operator/Dockerfile"]
    assert lines[-1] == "==> operator/Dockerfile: written"


def test_images_without_a_dockerfile_are_refused() -> None:
    with pytest.raises(ImageError, match="image pause has no Dockerfile"):
        dockerfile.render(recipes.recipes()["pause"])


def test_prune_removes_the_archives_of_images_no_recipe_makes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from localcluster import paths
    from localcluster.images import builder

    monkeypatch.setenv("MSV_CACHE", str(tmp_path))
    paths.images_dir().mkdir(parents=True)
    old = paths.images_dir() / "model-server-0.1.0.oci.tar"  # the single image of 0.1.0
    old.write_bytes(b"x" * 100)
    old.with_name(old.name + ".digest").write_text("sha256:0")
    current = builder.archive_path("model-server-tensorflow")
    current.write_bytes(b"y" * 10)
    other_tag = paths.images_dir() / "model-server-9.9.9.oci.tar"
    other_tag.write_bytes(b"z")
    lines: list[str] = []
    assert builder.prune_layers(lines.append) == 100
    assert sorted(p.name for p in paths.images_dir().iterdir()) == [
        "model-server-9.9.9.oci.tar", "model-server-tensorflow-0.1.0.oci.tar"]
    assert lines == ["==> images: removed model-server-0.1.0.oci.tar (no recipe makes that "
                     "image any more)"]
