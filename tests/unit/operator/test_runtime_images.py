"""One model-server image per runtime: the operator picks it from spec.model.framework (the
capability table's runtime) and the device, and refuses a spec no configured image serves
(NoServingImage) before any object is built; the settings that configure the images."""

from __future__ import annotations

from typing import Any

import pytest
from fakekube import FakeKube
from msv_operator import builders as b
from msv_operator import kube as kubeapi
from msv_operator import reconcile, status
from msv_operator.config import (
    DEFAULT_IMAGES,
    ConfigError,
    OperatorConfig,
    RuntimeImages,
    default_image,
    load,
)
from msv_operator.spec import parse_spec

from msv_contract import capabilities as caps

TORCH = "modelservice/model-server-torch:0.1.0"
TF = "modelservice/model-server-tensorflow:0.1.0"
NOW = "2026-01-01T12:00:00Z"


def ms(framework: str = "tensorflow", **spec: Any) -> dict[str, Any]:
    model: dict[str, Any] = {"uri": "s3://models/m", "framework": framework}
    if caps.FRAMEWORKS[framework].tasks:
        model["task"] = "text-classification"
    return {"apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "m", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": {"model": model, **spec}}


def opts(images: dict[str, RuntimeImages] | None = None) -> b.BuildOptions:
    return b.BuildOptions(images=DEFAULT_IMAGES if images is None else images,
                          service_monitor=False, gateway_api=False)


def images_of(body: dict[str, Any], options: b.BuildOptions | None = None) -> dict[str, str]:
    """Deployment name -> the image of its server and of its model-pull init container."""
    out = {}
    for o in b.build_all(body, options or opts()):
        if o["kind"] == "Deployment":
            pod = o["spec"]["template"]["spec"]
            (server,) = pod["containers"]
            assert all(c["image"] == server["image"] for c in pod.get("initContainers", ()))
            out[o["metadata"]["name"]] = server["image"]
    return out


INT8 = {"name": "int8", "optimization": {"quantization": "dynamic-int8"}}


def test_the_default_images_are_the_locally_built_ones_per_runtime() -> None:
    expected = {"torch": RuntimeImages(TORCH, TORCH), "tensorflow": RuntimeImages(TF, None)}
    assert expected == DEFAULT_IMAGES
    assert set(DEFAULT_IMAGES) == set(caps.RUNTIME_NAMES)
    assert default_image("torch") == TORCH


@pytest.mark.parametrize(("framework", "gpu", "image"), [
    ("transformers", False, TORCH), ("torchscript", False, TORCH), ("tensorflow", False, TF),
    # torch's wheels carry CUDA: its one image serves GPU variants too
    ("transformers", True, TORCH), ("torchscript", True, TORCH),
])
def test_the_image_follows_the_frameworks_runtime_and_device(framework: str, gpu: bool,
                                                              image: str) -> None:
    body = ms(framework, **({"gpu": {"count": 1}} if gpu else {}))
    assert set(images_of(body).values()) == {image}
    assert b.serving_image(parse_spec(body), opts()) == image


def test_gpu_images_are_chosen_per_runtime_when_configured() -> None:
    custom = {"torch": RuntimeImages("t:cpu", "t:gpu"), "tensorflow": RuntimeImages("f:cpu",
                                                                                     "f:gpu")}
    assert images_of(ms("tensorflow", gpu={}), opts(custom)) == {"m-baseline": "f:gpu"}
    assert images_of(ms("tensorflow"), opts(custom)) == {"m-baseline": "f:cpu"}
    assert images_of(ms("transformers", gpu={}), opts(custom)) == {"m-baseline": "t:gpu"}


def test_a_runtime_without_a_gpu_image_is_refused_naming_the_field_and_the_setting() -> None:
    body = ms("tensorflow", gpu={"count": 1})
    with pytest.raises(b.NoServingImage) as e:
        b.build_all(body, opts())
    assert e.value.reason == "NoServingImage"
    assert str(e.value) == (
        "spec.model.framework: tensorflow runs in the tensorflow runtime, and the operator has "
        "no tensorflow model-server image for GPU variants (spec.gpu); set the operator's "
        "MSV_TENSORFLOW_GPU_IMAGE (chart value modelServer.images.tensorflow.gpuImage), or "
        "spec.server.image, or remove spec.gpu")
    # a runtime the operator serves nowhere: refused on CPU too
    no_tf = {"torch": RuntimeImages(TORCH, TORCH), "tensorflow": RuntimeImages(None, None)}
    with pytest.raises(b.NoServingImage, match=r"^spec\.model\.framework: .* for CPU variants; "
                                               r"set the operator's MSV_TENSORFLOW_IMAGE \("):
        b.build_all(ms("tensorflow"), opts(no_tf))
    with pytest.raises(b.NoServingImage, match="no torch model-server image"):
        b.build_all(ms("transformers"), opts({"tensorflow": RuntimeImages(TF, None)}))


def test_spec_server_image_overrides_the_runtimes_image() -> None:
    body = ms("tensorflow", gpu={"count": 1}, server={"image": "registry.local/tf-cuda:2"})
    assert images_of(body) == {"m-baseline": "registry.local/tf-cuda:2"}
    assert images_of(ms("transformers", server={"image": "x:1"})) == {"m-baseline": "x:1"}


def test_a_quantization_the_device_cannot_run_is_refused_naming_the_variant_and_image() -> None:
    with_gpu = {**DEFAULT_IMAGES, "tensorflow": RuntimeImages(TF, "registry.local/tf:gpu")}
    body = ms("tensorflow", gpu={"count": 1}, variants=[{"name": "baseline"}, INT8],
              traffic=[{"variant": "baseline", "weight": 100}])
    with pytest.raises(b.NoServingImage) as e:
        b.build_all(body, opts(with_gpu))
    assert str(e.value).startswith(
        "spec.variants[1].optimization.quantization: dynamic-int8 of framework tensorflow runs "
        "on cpu only, but the variant would run on cuda (spec.gpu, image registry.local/tf:gpu)"
        ": TensorFlow's quantized variants are TFLite models")
    # the same variants on CPU are served; so is an unquantized TensorFlow variant on GPU
    cpu = ms("tensorflow", variants=[{"name": "baseline"}, INT8],
             traffic=[{"variant": "baseline", "weight": 100}])
    assert images_of(cpu, opts(with_gpu)) == {"m-baseline": TF, "m-int8": TF}
    assert images_of(ms("tensorflow", gpu={}), opts(with_gpu)) == {
        "m-baseline": "registry.local/tf:gpu"}
    # torch runs dynamic-int8 on GPU (torchao): not refused
    torch_gpu = ms("transformers", gpu={}, variants=[{"name": "baseline"}, INT8],
                   traffic=[{"variant": "baseline", "weight": 100}])
    assert set(images_of(torch_gpu).values()) == {TORCH}


def test_the_capability_table_says_which_devices_run_each_quantization() -> None:
    assert caps.devices("tensorflow", "dynamic-int8") == ("cpu",)
    assert caps.devices("tensorflow", "float16") == ("cpu",)
    assert caps.devices("tensorflow") == caps.DEVICES
    assert caps.devices("transformers", "dynamic-int8") == caps.DEVICES
    assert caps.devices("tensorflow", "bfloat16") == ()  # not applied at all
    assert caps.devices("onnx") == ()
    for fw in caps.FRAMEWORKS.values():
        assert fw.runtime in caps.RUNTIMES, fw.name
        assert fw.extra == caps.RUNTIMES[fw.runtime].extra
        for quant, limit in fw.device_limits:
            assert quant in fw.quantizations and set(limit) <= set(caps.DEVICES), fw.name
            assert fw.device_limit_reason, f"{fw.name}: say why {quant} is limited"


# -- the refusal in the status and the reconcile pass ----------------------------------------


def test_status_reports_no_serving_image_as_a_stalled_failure() -> None:
    st = status.compute_status(ms(), deployments={}, pods=[], now=NOW, observed_generation=1,
                               invalid_spec="spec.model.framework: no image",
                               invalid_reason="NoServingImage")
    conds = {c["type"]: c for c in st["conditions"]}
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "NoServingImage")
    assert conds["Ready"]["message"] == "spec.model.framework: no image"
    assert (conds["Stalled"]["status"], conds["Stalled"]["reason"]) == ("True", "NoServingImage")
    assert conds["Progressing"]["status"] == "False"
    assert "model-server image" in conds["Progressing"]["message"]
    # InvalidSpec keeps its wording
    st = status.compute_status(ms(), deployments={}, pods=[], now=NOW, observed_generation=1,
                               invalid_spec="spec.x: bad")
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["Ready"]["reason"] == "InvalidSpec"
    assert conds["Progressing"]["message"] == "the spec must be fixed before rolling out"


class FixedCapabilities:
    def get(self) -> kubeapi.CapabilityAnswer:
        return kubeapi.CapabilityAnswer(service_monitor=False, gateway_api=False)


def run_pass(body: dict[str, Any], config: OperatorConfig) -> tuple[reconcile.Result, FakeKube]:
    fake = FakeKube()
    ctx = reconcile.Context(config=config, kube=fake,
                            capabilities=FixedCapabilities())  # type: ignore[arg-type]
    return reconcile.reconcile(ctx, body, reconcile.Observed(), NOW), fake


def test_a_pass_over_an_unserved_spec_applies_nothing_and_says_why() -> None:
    result, fake = run_pass(ms("tensorflow", gpu={"count": 1}), OperatorConfig())
    assert fake.applied == {}
    assert result.outcome == "invalid" and result.invalid_reason == "NoServingImage"
    (written,) = fake.statuses
    ready = next(c for c in written["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NoServingImage")
    assert ready["message"].startswith("spec.model.framework: tensorflow")
    assert "MSV_TENSORFLOW_GPU_IMAGE" in ready["message"]
    # the same ModelService on CPU: its Deployment carries the TensorFlow image
    result, fake = run_pass(ms("tensorflow"), OperatorConfig())
    assert result.invalid is None
    deps = [o for o in fake.applied.values() if o["kind"] == "Deployment"]
    assert [d["spec"]["template"]["spec"]["containers"][0]["image"] for d in deps] == [TF]


def test_an_invalid_spec_keeps_its_reason() -> None:
    result, fake = run_pass(ms("tensorflow", variants=[{"name": "Bad_Name"}]), OperatorConfig())
    assert (result.invalid_reason, fake.applied) == ("InvalidSpec", {})


# -- settings -----------------------------------------------------------------------------------


def test_images_per_runtime_from_environment_and_flags() -> None:
    env = {"MSV_TORCH_IMAGE": "reg/torch:1", "MSV_TENSORFLOW_IMAGE": "reg/tf:1",
           "MSV_TENSORFLOW_GPU_IMAGE": "reg/tf-cuda:1", "MSV_TORCH_GPU_IMAGE": ""}
    _, cfg = load(["run"], env)
    assert cfg.images == {"torch": RuntimeImages("reg/torch:1", None),
                          "tensorflow": RuntimeImages("reg/tf:1", "reg/tf-cuda:1")}
    _, cfg = load(["run", "--torch-gpu-image", "flag/torch-gpu:2", "--tensorflow-image", ""],
                  env)
    assert cfg.images == {"torch": RuntimeImages("reg/torch:1", "flag/torch-gpu:2"),
                          "tensorflow": RuntimeImages(None, "reg/tf-cuda:1")}


@pytest.mark.parametrize(("argv", "env", "needle"), [
    (["run"], {"MSV_DEFAULT_IMAGE": "img:1"}, "MSV_DEFAULT_IMAGE was replaced by one "
     "model-server image per runtime: set MSV_TORCH_IMAGE, MSV_TORCH_GPU_IMAGE, "
     "MSV_TENSORFLOW_IMAGE, MSV_TENSORFLOW_GPU_IMAGE"),
    (["run"], {"MSV_DEFAULT_GPU_IMAGE": "img:1"}, "MSV_DEFAULT_GPU_IMAGE was replaced"),
    (["run", "--default-image", "x"], {}, "--default-image was replaced by one model-server "
     "image per runtime: set --torch-image, --torch-gpu-image, --tensorflow-image"),
    (["run", "--default-gpu-image", "x"], {}, "--default-gpu-image was replaced"),
])
def test_the_single_image_settings_are_refused_naming_their_replacement(
        argv: list[str], env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(argv, env)
    assert str(e.value).startswith(needle)


def test_an_empty_old_setting_is_ignored() -> None:
    _, cfg = load(["run"], {"MSV_DEFAULT_IMAGE": "", "MSV_DEFAULT_GPU_IMAGE": ""})
    assert cfg.images == DEFAULT_IMAGES
