"""The chart's model-server images: one per runtime of the capability table, each a value
with a comment and a schema entry, rendered into the operator's settings; the single image
of 0.1.0 (modelServer.image/gpuImage) fails the render with a message naming the new values."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from msv_operator.config import DEFAULT_IMAGES, image_env, load
from test_chart_and_gitops import CHART, helm, render

from msv_contract import capabilities as caps


def operator_env(*sets: str) -> dict[str, str]:
    dep = next(d for d in render(*sets) if d["kind"] == "Deployment")
    return {e["name"]: e.get("value") for e in
            dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_values_and_schema_list_every_runtime_and_nothing_else() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    images = values["modelServer"]["images"]
    assert list(images) == list(caps.RUNTIME_NAMES)
    assert set(schema["properties"]["modelServer"]["properties"]["images"]["properties"]) == set(
        caps.RUNTIME_NAMES)
    assert "image" not in values["modelServer"] and "gpuImage" not in values["modelServer"]
    for rt, entry in images.items():
        assert entry["image"] == DEFAULT_IMAGES[rt].cpu, rt
        assert (entry["gpuImage"] or None) == DEFAULT_IMAGES[rt].gpu, rt


def test_every_image_value_has_a_comment_above_it() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    start = lines.index("modelServer:")
    block = []
    for line in lines[start + 1:]:
        if line and not line.startswith(" "):
            break
        block.append(line)
    keys = [i for i, line in enumerate(block) if re.match(r"^\s+[A-Za-z]+:", line)]
    assert len(keys) == 1 + 3 * len(caps.RUNTIMES)  # images; per runtime: itself + 2 images
    for i in keys:
        assert block[i - 1].strip().startswith("# --"), block[i]


def test_the_rendered_settings_are_what_the_operator_reads() -> None:
    env = operator_env()
    wanted = {image_env(rt, gpu) for rt in caps.RUNTIME_NAMES for gpu in (False, True)}
    assert wanted <= set(env)
    assert not {"MSV_DEFAULT_IMAGE", "MSV_DEFAULT_GPU_IMAGE"} & set(env)
    _, cfg = load(["run"], {k: v for k, v in env.items() if k.startswith("MSV_")
                            and v is not None and not k.startswith("MSV_LEADER")})
    assert cfg.images == DEFAULT_IMAGES  # the chart's defaults are the operator's


def test_images_are_set_per_runtime_and_an_empty_one_is_not_served() -> None:
    env = operator_env("modelServer.images.tensorflow.gpuImage=reg/tf-cuda:1",
                       "modelServer.images.torch.image=reg/torch-cpu:1",
                       "modelServer.images.torch.gpuImage=")
    _, cfg = load(["run"], {k: env[k] for k in env if k.endswith("_IMAGE")})
    assert (cfg.images["tensorflow"].gpu, cfg.images["tensorflow"].cpu) == (
        "reg/tf-cuda:1", DEFAULT_IMAGES["tensorflow"].cpu)
    assert (cfg.images["torch"].cpu, cfg.images["torch"].gpu) == ("reg/torch-cpu:1", None)


def test_the_single_image_values_of_0_1_0_fail_the_render_naming_the_new_ones() -> None:
    for value in ("modelServer.image=reg/ms:1", "modelServer.gpuImage=reg/ms:1-cuda"):
        out = helm("template", "rel", str(CHART), "--set", value, check=False)
        assert out.returncode != 0
        assert ("modelServer.image and modelServer.gpuImage were replaced by one image per "
                "runtime: set modelServer.images.<runtime>.image") in out.stderr, out.stderr
    out = helm("template", "rel", str(CHART), "--set", "modelServer.images.onnx.image=x",
               check=False)
    assert "additional properties 'onnx' not allowed" in out.stderr


def test_the_upgrade_note_works_on_a_release_with_the_old_values(tmp_path: Path) -> None:
    old = tmp_path / "old-values.yaml"  # what a 0.1.0 release has (helm get values)
    old.write_text("modelServer:\n  image: reg/ms:0.1.0\n  gpuImage: reg/ms:0.1.0-cuda\n")
    assert helm("template", "rel", str(CHART), "-f", str(old), check=False).returncode != 0
    out = helm("template", "rel", str(CHART), "-f", str(old),
               "--set", "modelServer.image=null", "--set", "modelServer.gpuImage=null",
               "--set", "modelServer.images.torch.image=reg/ms:0.1.0")
    dep = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in
           dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MSV_TORCH_IMAGE"] == "reg/ms:0.1.0"
    assert env["MSV_TENSORFLOW_IMAGE"] == DEFAULT_IMAGES["tensorflow"].cpu


def _schema_entry(schema: dict[str, Any], runtime: str) -> dict[str, Any]:
    ref = schema["properties"]["modelServer"]["properties"]["images"]["properties"][runtime]
    return schema["definitions"][ref["$ref"].rsplit("/", 1)[1]]  # type: ignore[no-any-return]


def test_a_runtimes_schema_allows_only_image_and_gpu_image() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for rt in caps.RUNTIME_NAMES:
        entry = _schema_entry(schema, rt)
        assert entry["additionalProperties"] is False
        assert set(entry["properties"]) == {"image", "gpuImage"}
