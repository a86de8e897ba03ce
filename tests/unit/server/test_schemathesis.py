"""Property-based run over the OpenAPI document: no request may produce a 5xx.

The schema comes from the app itself; requests go over real HTTP to the app under uvicorn
with a test-double model loaded. Path parameters are pinned to the served model so the
generated bodies reach the dataplane's validation instead of stopping at 404.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry
from schemathesis.checks import not_a_server_error

from model_server.app import create_app
from model_server.settings import Settings

from .conftest import UvicornThread
from .doubles import GenerateBackend


def _app():  # type: ignore[no-untyped-def]
    return create_app(
        Settings(model_name="echo", max_request_bytes=64 * 1024),  # OIP and OpenAI routes
        registry=CollectorRegistry(),
        backend=GenerateBackend(),
    )


schema = schemathesis.openapi.from_dict(_app().openapi())


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    import httpx

    with UvicornThread(_app()) as server:
        url = f"http://{server.url}"
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield url


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case: schemathesis.Case, base_url: str) -> None:
    if case.path_parameters:
        if "model_name" in case.path_parameters:
            case.path_parameters["model_name"] = "echo"
        if "model_version" in case.path_parameters:
            case.path_parameters["model_version"] = "1"
    if case.path.startswith("/v1/") and isinstance(case.body, dict) and case.body.get("model"):
        case.body["model"] = "echo"  # reach the parameter checks, not only the 404
    response = case.call(base_url=base_url)
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
    case.validate_response(response, checks=[not_a_server_error])
