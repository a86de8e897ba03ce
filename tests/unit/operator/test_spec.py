"""msv_operator.spec: the typed view of a ModelService and its semantic checks; an invalid spec
is an InvalidSpecError naming the field, and the builders (which parse first) refuse it too."""

from __future__ import annotations

from typing import Any

import pytest
from manifests import manifest
from msv_operator import builders as b
from msv_operator.config import uniform_images
from msv_operator.spec import InvalidSpecError, parse_spec

OPTS = b.BuildOptions(images=uniform_images("ms:cpu", "ms:cuda"),
                      service_monitor=False, gateway_api=False)
MODEL = {"uri": "s3://models/sst2", "framework": "transformers", "task": "text-classification"}


@pytest.mark.parametrize(("spec", "message"), [
    ({"model": {"uri": "ftp://x/y", "framework": "transformers", "task": "t"}},
     "scheme 'ftp' is not supported"),
    ({"model": {"uri": "s3://b/k", "framework": "transformers"}}, "spec.model.task: required"),
    ({"model": {"uri": "s3://b/k", "framework": "transformers", "task": "fill-mask"}},
     "spec.model.task: 'fill-mask' is not served by the model server"),
    ({"model": {"uri": "s3://b/k", "framework": "torchscript"},
      "variants": [{"name": "q", "optimization": {"quantization": "dynamic-int8"}}]},
     "TorchScript models have compiled layer shapes"),
    ({"model": {"uri": "s3://b/k", "framework": "tensorflow"},
      "variants": [{"name": "p", "optimization": {"pruning": {"method": "structured",
                                                                "amount": 0.2}}}]},
     "TensorFlow variants support"),
    ({"model": {"uri": "s3://b/k", "framework": "tensorflow"},
      "variants": [{"name": "a"}], "traffic": [{"variant": "a", "weight": 60}]},
     "weights sum to 60, expected 100"),
    ({"model": {"uri": "s3://b/k", "framework": "tensorflow"},
      "variants": [{"name": "a"}, {"name": "a"}]}, "listed twice"),
    ({"model": {"uri": "s3://b/k", "framework": "tensorflow"},
      "variants": [{"name": "x" * 60}]}, "longer than 63 characters"),
    ({"model": {"uri": "file://relative", "framework": "tensorflow"}}, "absolute path"),
    ({"model": {"uri": "s3://b/k", "framework": "tensorflow"},
      "autoscaling": {"minReplicas": 4, "maxReplicas": 2}}, "must not exceed maxReplicas"),
])
def test_invalid_specs_name_the_field(spec: dict[str, Any], message: str) -> None:
    body = {"metadata": {"name": "sentiment", "namespace": "ml", "uid": "u"}, "spec": spec}
    with pytest.raises(InvalidSpecError, match=message):
        parse_spec(body)
    with pytest.raises(InvalidSpecError):
        b.build_all(body, OPTS)


def test_bad_secret_names_name_the_field() -> None:
    with pytest.raises(InvalidSpecError, match=r"spec\.server\.tls\.secretName"):
        parse_spec(manifest("sentiment", "ml", {"model": MODEL,
                                                 "server": {"tls": {"secretName": "Not_Valid"}}}))
    with pytest.raises(InvalidSpecError, match=r"spec\.server\.auth\.tokenSecret"):
        parse_spec(manifest("sentiment", "ml", {"model": MODEL,
                                                 "server": {"auth": {"tokenSecret": "-x"}}}))


def test_spec_tasks_are_the_tasks_the_model_server_serves() -> None:
    from msv_operator import spec

    from model_server.backends import transformers_backend

    assert spec.TASKS == transformers_backend.TASKS
