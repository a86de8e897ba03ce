"""Bearer tokens and TLS in pods that really run, failing closed.

One ModelService with a token Secret and a TLS Secret (a CA and a serving certificate made
here, naming the Service's DNS names and its ClusterIP) serves on the real node. Through its
Service, every client verifies TLS against that CA (never verification off): REST (httpx),
gRPC (tritonclient.grpc, the CA as root certificates) and the OpenAI-compatible API (the
``openai`` client over an httpx client with the CA) refuse a missing or wrong token and
accept the right one. Prometheus (prometheus-operator, from the ServiceMonitor the operator
writes) scrapes the pod over https, verifying the certificate with the Secret's ``ca.crt``
and presenting the token (``protectMetrics``); trusting another CA, it cannot. Rotating the
token Secret takes effect in the running pod (same uid, no restart); the time it takes is
printed. A ModelService whose token Secret does not exist gets ``Ready=False,
AuthSecretMissing`` naming the Secret and never an endpoint; an empty ``tokenSecret`` is
refused by the API server.
"""

from __future__ import annotations

import base64
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from manifests import modelservice
from msv_operator import kube
from test_real_pods import (
    classifier,  # noqa: F401  (the fixture: a tiny text classifier)
    operator,  # noqa: F401  (the fixture: an operator on real_namespace)
    served,
    stores,  # noqa: F401  (the fixture: the in-cluster model stores)
    wait_ready,
    wait_reason,
)
from waiting import wait_for

from localcluster import cluster as lc
from localcluster import modelstores, monitoring
from tests.unit.server.certs import write_tls_secret

pytestmark = [pytest.mark.slow, pytest.mark.torch]

MONITORING_API = "monitoring.coreos.com/v1"
OLD, NEW, WRONG = "first-token-4f1d", "rotated-token-9c2e", "guessed-token"
GRPC_PORT = 8081


def secret(name: str, ns: str, data: Mapping[str, bytes], type_: str = "Opaque"
           ) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": type_,
            "metadata": {"name": name, "namespace": ns},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def routed_https(k: kube.Kube, ns: str, name: str, verify: ssl.SSLContext) -> str:
    """The Service's ClusterIP once a ready pod backs it and it answers over verified TLS."""
    ip: str = k.get("v1", "Service", ns, name)["spec"]["clusterIP"]

    def answers() -> bool:
        try:
            status = httpx.get(f"https://{ip}:80/v2/health/ready", verify=verify,
                               timeout=3).status_code
        except httpx.TransportError as e:
            raise AssertionError(repr(e)) from None  # not yet; shown if it never answers
        assert status == 200, status
        return True
    wait_for(f"Service {ns}/{name} to answer over https", answers, timeout=90, interval=0.5)
    return ip


def grpc_metadata(ip: str, ca: Path, token: str | None) -> str:
    """"OK" or the gRPC status of ModelMetadata over TLS verified with ``ca``."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"{ip}:{GRPC_PORT}", ssl=True,
                                              root_certificates=str(ca))
    try:
        headers = {"authorization": f"Bearer {token}"} if token else None
        meta = client.get_model_metadata("secure", headers=headers, client_timeout=10)
        assert meta.name == "secure"
        return "OK"
    except InferenceServerException as e:
        return str(e.status())
    finally:
        client.close()


def openai_models(ip: str, verify: ssl.SSLContext, token: str) -> str:
    """The model ids /v1/models lists, or "401", with the official client over verified TLS."""
    import openai

    with httpx.Client(verify=verify, timeout=10) as http:
        client = openai.OpenAI(base_url=f"https://{ip}:80/v1", api_key=token, max_retries=0,
                               http_client=http)
        try:
            return ",".join(m.id for m in client.models.list())
        except openai.AuthenticationError as e:
            assert e.status_code == 401
            return "401"


def rest_status(ip: str, verify: ssl.SSLContext, token: str | None) -> int:
    return httpx.get(f"https://{ip}:80/v2/models/secure", headers=bearer(token), verify=verify,
                     timeout=10).status_code


def test_empty_secret_names_are_refused_by_the_api_server(
        crd: None, namespace: str, k: kube.Kube) -> None:
    for server, field in (({"auth": {"tokenSecret": ""}}, "spec.server.auth.tokenSecret"),
                          ({"tls": {"secretName": ""}}, "spec.server.tls.secretName"),
                          ({"auth": {"protectMetrics": True}}, "spec.server.auth.tokenSecret")):
        with pytest.raises(kube.Rejected) as info:
            k.apply(modelservice("empty-secret", namespace, server=server))
        assert field in str(info.value), info.value
        if "protectMetrics" not in str(server):
            assert "must name a Secret" in str(info.value), info.value


def test_tokens_and_tls_in_real_pods(
        cluster: lc.Cluster, stores: None, classifier: Path,  # noqa: F811
        real_namespace: str, operator: Any, k: kube.Kube,  # noqa: F811
        tmp_path: Path) -> None:
    ns = real_namespace
    uri, digest = modelstores.publish_http(classifier, f"{ns}-secure")
    k.apply(secret("tokens", ns, {"token": OLD.encode()}))
    server = {"auth": {"tokenSecret": "tokens", "protectMetrics": True},
              "tls": {"secretName": "secure-tls"}}

    def secure(replicas: int) -> dict[str, Any]:
        return served("secure", ns, uri, digest, server=server,
                      variants=[{"name": "baseline", "replicas": replicas}],
                      monitoring={"interval": "5s"})

    # No pod until the certificate exists: it must name the Service's ClusterIP, which the
    # API server assigns when the operator creates the Service.
    k.apply(secure(0))
    k.apply(served("nosecret", ns, uri, digest,
                   server={"auth": {"tokenSecret": "no-such-tokens"}}))
    svc = wait_for("the Service secure", lambda: k.get("v1", "Service", ns, "secure"), timeout=60)
    ip = svc["spec"]["clusterIP"]
    names = ["secure", f"secure.{ns}", f"secure.{ns}.svc", f"secure.{ns}.svc.cluster.local"]
    pem = write_tls_secret(tmp_path / "tls", dns_names=names, ips=[ip])
    k.apply(secret("secure-tls", ns, {f: (pem / f).read_bytes()
                                      for f in ("tls.crt", "tls.key", "ca.crt")},
                   type_="kubernetes.io/tls"))
    k.apply(secure(1))
    wait_ready(k, ns, "secure")
    ca = pem / "ca.crt"
    verify = ssl.create_default_context(cafile=str(ca))
    assert routed_https(k, ns, "secure", verify) == ip

    # Every front end refuses a missing or wrong token and accepts the right one.
    assert [rest_status(ip, verify, t) for t in (None, WRONG, OLD)] == [401, 401, 200]
    infer = httpx.post(f"https://{ip}:80/v2/models/secure/infer", headers=bearer(OLD),
                       verify=verify, timeout=30, json={"inputs": [
                           {"name": "text", "shape": [1], "datatype": "BYTES",
                            "data": ["what a lovely day"]}]})
    assert infer.status_code == 200 and infer.json()["outputs"], infer.text
    assert httpx.get(f"https://{ip}:80/metrics", verify=verify, timeout=10).status_code == 401
    assert [grpc_metadata(ip, ca, t) for t in (None, WRONG, OLD)] == [
        "StatusCode.UNAUTHENTICATED", "StatusCode.UNAUTHENTICATED", "OK"]
    assert httpx.get(f"https://{ip}:80/v1/models", verify=verify, timeout=10).status_code == 401
    assert [openai_models(ip, verify, t) for t in (WRONG, OLD)] == ["401", "secure"]
    # ... and no client gets anywhere without trusting the CA
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"https://{ip}:80/v2/health/live", timeout=10)

    # Prometheus scrapes the pod over https, verifying the certificate, with the token; a copy
    # of the operator's ServiceMonitor that trusts another CA gets nowhere.
    monitor = k.get(MONITORING_API, "ServiceMonitor", ns, "secure")
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["tlsConfig"] == {"ca": {"secret": {"name": "secure-tls", "key": "ca.crt"}},
                                     "serverName": f"secure.{ns}.svc"}
    assert endpoint["authorization"]["credentials"] == {"name": "tokens", "key": "token"}
    other_ca = write_tls_secret(tmp_path / "other") / "ca.crt"
    k.apply(secret("other-ca", ns, {"ca.crt": other_ca.read_bytes()}))
    k.apply({"apiVersion": MONITORING_API, "kind": "ServiceMonitor",
             "metadata": {"name": "wrong-ca", "namespace": ns},
             "spec": {**monitor["spec"], "endpoints": [{**endpoint, "tlsConfig": {
                 **endpoint["tlsConfig"], "ca": {"secret": {"name": "other-ca",
                                                            "key": "ca.crt"}}}}]}})
    labels = {"namespace": ns, "service": "secure"}
    found = monitoring.wait_for_target(labels, timeout=180)
    up = [t for t in found if t.get("health") == "up"]
    assert up and all(t["scrapeUrl"].startswith("https://") for t in up), found
    assert {t["scrapePool"] for t in up} == {f"serviceMonitor/{ns}/secure/0"}, found
    refused = [t for t in monitoring.wait_for_target(labels, timeout=120, health="down")
               if t["scrapePool"] == f"serviceMonitor/{ns}/wrong-ca/0"]
    assert refused and "certificate" in refused[0]["lastError"], refused

    # Rotation: the running pod takes the new token and drops the old one, no restart.
    (pod,) = k.list("v1", "Pod", ns, "serving.modelservice.dev/modelservice=secure")
    uid = pod["metadata"]["uid"]
    started = time.monotonic()
    k.apply(secret("tokens", ns, {"token": NEW.encode()}))
    wait_for("the rotated token to work and the old one to stop",
             lambda: (rest_status(ip, verify, NEW), rest_status(ip, verify, OLD)) == (200, 401),
             timeout=180, interval=0.5)
    took = time.monotonic() - started
    print(f"token rotation took effect in the running pod after {took:.1f} s")
    assert [grpc_metadata(ip, ca, t) for t in (OLD, NEW)] == [
        "StatusCode.UNAUTHENTICATED", "OK"]
    assert [openai_models(ip, verify, t) for t in (OLD, NEW)] == ["401", "secure"]
    (after,) = k.list("v1", "Pod", ns, "serving.modelservice.dev/modelservice=secure")
    assert after["metadata"]["uid"] == uid
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0

    # A token Secret that does not exist: a condition naming it, and nothing served.
    c = wait_reason(k, ns, "nosecret", "AuthSecretMissing", timeout=180)
    assert c["message"].startswith(
        'Secret "no-such-tokens" (spec.server.auth.tokenSecret) does not exist'), c
    (stuck,) = k.list("v1", "Pod", ns, "serving.modelservice.dev/modelservice=nosecret")
    assert not any(cs.get("ready") for cs in stuck["status"].get("containerStatuses") or ())
    slices = k.list("discovery.k8s.io/v1", "EndpointSlice", ns,
                    "kubernetes.io/service-name=nosecret")
    assert not [e for s in slices for e in s.get("endpoints") or []
                if (e.get("conditions") or {}).get("ready")]
    other = k.get("v1", "Service", ns, "nosecret")["spec"]["clusterIP"]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://{other}/v2/models/nosecret", timeout=5)
