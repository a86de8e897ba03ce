"""Pure builders: ModelService in, manifests out (the spec parser's own checks: test_spec.py)."""

from __future__ import annotations

import copy
import shutil
from typing import Any

import pytest
from msv_operator import builders as b
from msv_operator.config import uniform_images
from msv_operator.spec import parse_spec

OPTS = b.BuildOptions(images=uniform_images("ms:cpu", "ms:cuda"),
                      service_monitor=False, gateway_api=False)


def ms(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"uri": "s3://models/sst2", "framework": "transformers",
                  "task": "text-classification"}}
    base.update(spec)
    return {"apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
            "metadata": {"name": "sentiment", "namespace": "ml", "uid": "uid-1"}, "spec": base}


def by_kind(objs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def env_of(dep: dict[str, Any]) -> dict[str, str]:
    c = dep["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in c["env"]}


def test_minimal_spec_builds_one_variant_a_stable_service_and_annotations() -> None:
    objs = b.build_all(ms(), OPTS)
    # one variant: the stable Service is its only Service, labelled with the variant
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("Service", "sentiment"), ("Deployment", "sentiment-baseline")]
    assert objs[0]["metadata"]["labels"][b.LABEL_VARIANT] == "baseline"
    dep = objs[1]
    assert dep["spec"]["replicas"] == 1
    assert dep["metadata"]["ownerReferences"] == [{
        "apiVersion": "serving.modelservice.dev/v1alpha1", "kind": "ModelService",
        "name": "sentiment", "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]
    tmpl = dep["spec"]["template"]
    assert tmpl["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert tmpl["metadata"]["labels"][b.LABEL_VARIANT] == "baseline"
    for o in objs:
        assert o["metadata"]["labels"][b.LABEL_MODELSERVICE] == "sentiment"
        assert o["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "modelservice-operator"


def test_container_contract_env_probes_and_restricted_security() -> None:
    spec = ms(variants=[{"name": "int8", "optimization": {"quantization": "dynamic-int8"}},
                        {"name": "pruned", "optimization": {
                            "pruning": {"method": "structured", "amount": 0.3}}}],
              traffic=[{"variant": "int8", "weight": 100}],
              server={"batching": {"maxBatchSize": 16, "maxDelayMs": 3}})
    deps = by_kind(b.build_all(spec, OPTS), "Deployment")
    env = env_of(deps["sentiment-int8"])
    assert env["MODEL_SERVER_QUANTIZATION"] == "dynamic-int8"
    assert env["MODEL_SERVER_MAX_BATCH_SIZE"] == "16"
    assert env["MODEL_SERVER_MAX_DELAY_MS"] == "3"
    assert env["MODEL_SERVER_MODEL_NAME"] == "sentiment"
    assert env["MODEL_SERVER_DEVICE"] == "cpu"
    pruned = env_of(deps["sentiment-pruned"])
    assert (pruned["MODEL_SERVER_PRUNING_METHOD"], pruned["MODEL_SERVER_PRUNING_AMOUNT"]) == (
        "structured", "0.3")
    pod = deps["sentiment-int8"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    # weight 0 -> the stable Service does not select the pruned variant's pods
    pruned_labels = deps["sentiment-pruned"]["spec"]["template"]["metadata"]["labels"]
    assert pruned_labels[b.LABEL_SERVING] == "false"


def test_gpu_requests_placement_and_tolerations() -> None:
    spec = ms(gpu={"count": 2, "resourceName": "nvidia.com/mig-1g.10gb",
                   "products": ["NVIDIA-A100-SXM4-80GB"],
                   "tolerations": [{"key": "team", "operator": "Equal", "value": "ml",
                                    "effect": "NoSchedule"}]})
    dep = by_kind(b.build_all(spec, OPTS), "Deployment")["sentiment-baseline"]
    pod = dep["spec"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/mig-1g.10gb"] == "2"
    assert res["requests"]["nvidia.com/mig-1g.10gb"] == "2"
    assert pod["containers"][0]["image"] == "ms:cuda"
    assert env_of(dep)["MODEL_SERVER_DEVICE"] == "cuda"
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchExpressions"][0] == {
        "key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"]
    assert any(t.get("key") == "team" for t in pod["tolerations"])


def test_a_gpu_placement_sets_the_resource_the_products_and_the_inputs_it_was_chosen_for(
) -> None:
    from msv_operator import pools

    body = ms(gpu={"count": 1}, variants=[{"name": "fp16"}, {"name": "int8"}, {"name": "big"}],
              traffic=[{"variant": "fp16", "weight": 100}],
              autoscaling={"minReplicas": 1, "maxReplicas": 2})
    mig = b.GpuPlacement(pools.Target("nvidia.com/mig-2g.20gb", 1, ("NVIDIA-H100-80GB-HBM3",)),
                        "inputs-1")
    objs = b.build_all(body, OPTS, gpu={"int8": mig}, withheld=("big",))
    deps = by_kind(objs, "Deployment")
    # the refused variant: no Deployment, no HPA; its Service stays (the route names it)
    assert sorted(deps) == ["sentiment-fp16", "sentiment-int8"]
    assert sorted(by_kind(objs, "HorizontalPodAutoscaler")) == sorted(deps)
    assert "sentiment-big" in by_kind(objs, "Service")
    int8 = deps["sentiment-int8"]
    assert int8["metadata"]["annotations"] == {b.PLACEMENT_ANNOTATION: "inputs-1"}
    assert int8["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "nvidia.com/mig-2g.20gb": "1"}
    assert b.gpu_target_of(int8) == mig.target
    # without a placement: spec.gpu as written, whole GPUs, no affinity, no annotation
    fp16 = deps["sentiment-fp16"]
    assert "annotations" not in fp16["metadata"]
    assert "affinity" not in fp16["spec"]["template"]["spec"]
    assert b.gpu_target_of(fp16) == pools.Target("nvidia.com/gpu", 1)
    cpu = by_kind(b.build_all(ms(), OPTS), "Deployment")["sentiment-baseline"]
    assert b.gpu_target_of(cpu) is None and b.gpu_target_of(None) is None


@pytest.mark.parametrize(("uri", "volume_key", "init"), [
    ("pvc://models/sst2/v1", "persistentVolumeClaim", False),
    ("s3://bucket/key", "emptyDir", True),
    ("https://host/model.tar.gz", "emptyDir", True),
    ("file:///srv/models/x", "hostPath", False),
])
def test_model_source_wiring(uri: str, volume_key: str, init: bool) -> None:
    spec = ms()
    spec["spec"]["model"].update(uri=uri, credentialsSecret="store", sha256="a" * 64)
    pod = b.build_all(spec, OPTS)[1]["spec"]["template"]["spec"]
    model_vol = next(v for v in pod["volumes"] if v["name"] == "model")
    assert volume_key in model_vol
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model")
    assert mount["readOnly"] is True and mount["mountPath"] == "/mnt/models"
    if volume_key == "persistentVolumeClaim":
        assert model_vol["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
        assert mount["subPath"] == "sst2/v1"
    if init:
        (ic,) = pod["initContainers"]
        assert ic["args"] == ["pull", uri, "/mnt/models", "--sha256", "a" * 64]
        assert ic["envFrom"] == [{"secretRef": {"name": "store"}}]
    else:
        assert "initContainers" not in pod


def test_an_archive_on_a_claim_is_pulled_from_it_checked_not_mounted_as_the_model() -> None:
    opts = b.BuildOptions(images=uniform_images("ms:cpu"), service_monitor=False,
                          gateway_api=False, model_cache_url="http://cache.msv-system.svc:8090")
    spec = ms()
    spec["spec"]["model"].update(uri="pvc://models/sst2/model.tar.gz", sha256="c" * 64,
                                 credentialsSecret="store")
    pod = b.build_all(spec, opts)[1]["spec"]["template"]["spec"]
    (ic,) = pod["initContainers"]
    # no cache (the agent cannot read the pod's volume), no credentials (a volume needs none)
    assert ic["args"] == ["pull", "file:///mnt/claim/model/sst2/model.tar.gz", "/mnt/models",
                          "--sha256", "c" * 64]
    assert "envFrom" not in ic
    assert {"name": "model-claim", "mountPath": "/mnt/claim/model",
            "readOnly": True} in ic["volumeMounts"]
    assert {"name": "model", "emptyDir": {}} in pod["volumes"]
    assert {"name": "model-claim", "persistentVolumeClaim": {
        "claimName": "models", "readOnly": True}} in pod["volumes"]
    server = pod["containers"][0]
    assert [m["name"] for m in server["volumeMounts"] if m["name"].startswith("model")] == [
        "model"]


def test_the_model_cache_reaches_the_pull_and_leaves_mounted_sources_alone() -> None:
    opts = b.BuildOptions(images=uniform_images("ms:cpu"), service_monitor=False,
                          gateway_api=False, model_cache_url="http://cache.msv-system.svc:8090")
    spec = ms()
    spec["spec"]["model"].update(sha256="b" * 64)
    pod = b.build_all(spec, opts)[1]["spec"]["template"]["spec"]
    (ic,) = pod["initContainers"]
    assert ic["args"] == ["pull", "s3://models/sst2", "/mnt/models", "--sha256", "b" * 64,
                          "--cache", "http://cache.msv-system.svc:8090"]
    # The model pod itself stays as it was: no hostPath, the same security context.
    assert [v for v in pod["volumes"] if "hostPath" in v] == []
    assert ic["securityContext"]["runAsNonRoot"] is True
    pvc = ms()
    pvc["spec"]["model"]["uri"] = "pvc://models/sst2"
    assert "initContainers" not in b.build_all(pvc, opts)[1]["spec"]["template"]["spec"]


def test_hpa_owns_replicas() -> None:
    spec = ms(autoscaling={"minReplicas": 2, "maxReplicas": 6, "targetCPUUtilization": 60,
                           "targetInFlight": 4})
    objs = b.build_all(spec, OPTS)
    dep = by_kind(objs, "Deployment")["sentiment-baseline"]
    assert "replicas" not in dep["spec"]
    hpa = by_kind(objs, "HorizontalPodAutoscaler")["sentiment-baseline"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["scaleTargetRef"]["name"] == "sentiment-baseline"
    kinds = {m["type"] for m in hpa["metrics"]}
    assert kinds == {"Resource", "Pods"}
    pods = next(m for m in hpa["metrics"] if m["type"] == "Pods")["pods"]
    assert pods["metric"]["name"] == "model_server_inflight_requests"
    assert pods["target"]["averageValue"] == "4"


def test_replicas_split_by_weight_without_gateway() -> None:
    spec = ms(replicas=10, variants=[{"name": "a"}, {"name": "b"}, {"name": "c", "replicas": 3}],
              traffic=[{"variant": "a", "weight": 70}, {"variant": "b", "weight": 30}])
    deps = by_kind(b.build_all(spec, OPTS), "Deployment")
    assert {n: d["spec"]["replicas"] for n, d in deps.items()} == {
        "sentiment-a": 7, "sentiment-b": 3, "sentiment-c": 3}


def test_service_monitor_and_http_route_when_served() -> None:
    opts = b.BuildOptions(uniform_images("ms:cpu"), service_monitor=True, gateway_api=True)
    spec = ms(variants=[{"name": "a"}, {"name": "b"}],
              traffic=[{"variant": "a", "weight": 75}, {"variant": "b", "weight": 25}],
              gateway={"parentRefs": [{"name": "public", "namespace": "gw"}]})
    objs = b.build_all(spec, opts)
    assert "sentiment" in by_kind(objs, "ServiceMonitor")
    route = by_kind(objs, "HTTPRoute")["sentiment"]["spec"]
    assert route["parentRefs"] == [{"name": "public", "namespace": "gw"}]
    assert [(r["name"], r["weight"]) for r in route["rules"][0]["backendRefs"]] == [
        ("sentiment-a", 75), ("sentiment-b", 25)]
    dep = by_kind(objs, "Deployment")["sentiment-a"]
    assert "annotations" not in dep["spec"]["template"]["metadata"]
    # Without Gateway API the route is not built even though spec.gateway is set.
    no_gw = b.build_all(spec, b.BuildOptions(uniform_images("ms:cpu"), True, False))
    assert not by_kind(no_gw, "HTTPRoute")


def test_services_per_variant_only_with_two_or_more_variants() -> None:
    opts = b.BuildOptions(uniform_images("ms:cpu"), service_monitor=True, gateway_api=True)
    gateway = {"parentRefs": [{"name": "public", "namespace": "gw"}]}
    two = b.build_all(ms(variants=[{"name": "a"}, {"name": "b"}],
                         traffic=[{"variant": "a", "weight": 100}], gateway=gateway), opts)
    services = by_kind(two, "Service")
    assert set(services) == {"sentiment", "sentiment-a", "sentiment-b"}
    # The ServiceMonitor selects Services with a variant label: each pod is scraped once,
    # through its variant's Service; the stable Service (pods of several variants) has none.
    selector = by_kind(two, "ServiceMonitor")["sentiment"]["spec"]["selector"]
    assert {"key": b.LABEL_VARIANT, "operator": "Exists"} in selector["matchExpressions"]
    assert b.LABEL_VARIANT not in services["sentiment"]["metadata"]["labels"]
    assert services["sentiment-a"]["spec"]["selector"][b.LABEL_VARIANT] == "a"
    assert two[0]["kind"] == "Service"  # the stable Service is applied first

    one = b.build_all(ms(gateway=gateway), opts)
    services = by_kind(one, "Service")
    assert list(services) == ["sentiment"]
    assert services["sentiment"]["metadata"]["labels"][b.LABEL_VARIANT] == "baseline"
    route = by_kind(one, "HTTPRoute")["sentiment"]["spec"]
    assert [(r["name"], r["weight"]) for r in route["rules"][0]["backendRefs"]] == [
        ("sentiment", 100)]


def test_monitoring_disabled_builds_neither() -> None:
    objs = b.build_all(ms(monitoring={"serviceMonitor": "disabled"}),
                       b.BuildOptions(uniform_images("ms:cpu"), True, False))
    assert not by_kind(objs, "ServiceMonitor")
    assert "annotations" not in objs[1]["spec"]["template"]["metadata"]


def test_long_names_are_cut_with_a_stable_hash() -> None:
    name = b.object_name("m" * 50, "variant-name-long")
    assert len(name) <= 63
    assert name == b.object_name("m" * 50, "variant-name-long")
    assert name != b.object_name("m" * 50, "variant-name-lonx")


def test_builders_do_not_mutate_their_input() -> None:
    spec = ms(gpu={"count": 1, "tolerations": [{"key": "x", "operator": "Exists"}]})
    before = copy.deepcopy(spec)
    b.build_all(spec, OPTS)
    assert spec == before


def test_auth_and_tls_secrets_are_mounted_not_read() -> None:
    spec = ms(server={"auth": {"tokenSecret": "sentiment-tokens"},
                      "tls": {"secretName": "sentiment-tls"}},
              monitoring={"serviceMonitor": "enabled"})
    opts = b.BuildOptions(images=uniform_images("ms:cpu", None),
                          service_monitor=True, gateway_api=False)
    objs = b.build_all(spec, opts)
    dep = by_kind(objs, "Deployment")["sentiment-baseline"]
    env = env_of(dep)
    assert env["MODEL_SERVER_AUTH_TOKENS"] == b.AUTH_DIR
    assert env["MODEL_SERVER_AUTH_METRICS"] == "false"
    assert env["MODEL_SERVER_TLS_CERT_FILE"] == f"{b.TLS_DIR}/tls.crt"
    assert env["MODEL_SERVER_TLS_KEY_FILE"] == f"{b.TLS_DIR}/tls.key"
    pod = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    # optional: a missing Secret reaches the server, which refuses to start and says why
    assert volumes["auth-tokens"]["secret"] == {"secretName": "sentiment-tokens",
                                                "optional": True}
    assert volumes["tls"]["secret"] == {"secretName": "sentiment-tls", "optional": True}
    c = pod["containers"][0]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["auth-tokens"] == {"name": "auth-tokens", "mountPath": b.AUTH_DIR,
                                     "readOnly": True}
    assert mounts["tls"]["mountPath"] == b.TLS_DIR
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert c["livenessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert c["startupProbe"]["httpGet"]["scheme"] == "HTTPS"
    monitor = by_kind(objs, "ServiceMonitor")["sentiment"]
    assert monitor["spec"]["endpoints"][0]["scheme"] == "https"
    plain = by_kind(b.build_all(spec, OPTS), "Deployment")["sentiment-baseline"]  # no monitor
    assert plain["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scheme"] == "https"


MONITORED = b.BuildOptions(images=uniform_images("i"), service_monitor=True,
                           gateway_api=False)


def scrape_endpoint(**server: Any) -> dict[str, Any]:
    objs = b.build_all(ms(server=server), MONITORED)
    endpoints = by_kind(objs, "ServiceMonitor")["sentiment"]["spec"]["endpoints"]
    assert len(endpoints) == 1
    return endpoints[0]  # type: ignore[no-any-return]


def test_service_monitor_verifies_tls_with_the_secrets_ca_and_the_service_name() -> None:
    ep = scrape_endpoint(tls={"secretName": "sentiment-tls"})
    assert ep["scheme"] == "https"
    assert ep["tlsConfig"] == {
        "ca": {"secret": {"name": "sentiment-tls", "key": "ca.crt"}},
        "serverName": "sentiment.ml.svc"}
    assert "insecureSkipVerify" not in str(ep)
    assert "authorization" not in ep  # metrics stay open without protectMetrics


def test_service_monitor_presents_the_token_only_with_protect_metrics() -> None:
    open_metrics = scrape_endpoint(auth={"tokenSecret": "toks"})
    assert "authorization" not in open_metrics and "scheme" not in open_metrics
    protected = scrape_endpoint(auth={"tokenSecret": "toks", "protectMetrics": True})
    assert protected["authorization"] == {
        "type": "Bearer", "credentials": {"name": "toks", "key": "token"}}
    keyed = scrape_endpoint(auth={"tokenSecret": "toks", "protectMetrics": True,
                                  "metricsTokenKey": "prometheus"},
                            tls={"secretName": "t"})
    assert keyed["authorization"]["credentials"] == {"name": "toks", "key": "prometheus"}
    assert keyed["scheme"] == "https" and keyed["tlsConfig"]["serverName"] == "sentiment.ml.svc"


def _known_fields(value: Any, schema: dict[str, Any], where: str) -> None:
    """Every key of ``value`` is a property of ``schema`` (a structural CRD schema prunes
    unknown fields silently, so a misspelt one would just vanish)."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key, sub in value.items():
            assert key in props, f"{where}.{key} is not in the ServiceMonitor schema"
            _known_fields(sub, props[key], f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _known_fields(item, schema.get("items") or {}, f"{where}[{i}]")


@pytest.mark.skipif(shutil.which("go") is None, reason="needs the Go toolchain")
def test_service_monitor_matches_the_prometheus_operator_crd() -> None:
    """The built ServiceMonitor (TLS verified, token presented) is valid against the
    ServiceMonitor CRD of the pinned prometheus-operator module (v0.85)."""
    import jsonschema
    import yaml

    from localcluster import addons

    (crd_file,) = [f for f in addons.crd_files("prometheus-operator")
                   if f.name.endswith("_servicemonitors.yaml")]
    crd = yaml.safe_load(crd_file.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = version["schema"]["openAPIV3Schema"]
    spec = ms(server={"auth": {"tokenSecret": "toks", "protectMetrics": True},
                      "tls": {"secretName": "t"}})
    monitor = by_kind(b.build_all(spec, MONITORED), "ServiceMonitor")["sentiment"]
    jsonschema.validate(monitor, schema)
    _known_fields(monitor["spec"], schema["properties"]["spec"], "spec")


def test_grpc_port_in_pods_and_services_and_no_secrets_by_default() -> None:
    objs = b.build_all(ms(), OPTS)
    dep = by_kind(objs, "Deployment")["sentiment-baseline"]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "grpc", "containerPort": b.GRPC_PORT, "protocol": "TCP"} in c["ports"]
    assert env_of(dep)["MODEL_SERVER_GRPC_PORT"] == str(b.GRPC_PORT)
    assert "MODEL_SERVER_AUTH_TOKENS" not in env_of(dep)
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert {v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]} == {
        "model", "tmp", "podinfo"}
    for svc in by_kind(objs, "Service").values():
        ports = {p["name"]: p for p in svc["spec"]["ports"]}
        assert ports["grpc"] == {"name": "grpc", "port": b.GRPC_PORT, "targetPort": "grpc",
                                 "protocol": "TCP"}
        assert ports["http"]["port"] == 80


@pytest.mark.parametrize(("monitoring", "gateway", "served", "reasons"), [
    ({"serviceMonitor": "enabled"}, False, False, ["ServiceMonitorUnavailable"]),
    ({"serviceMonitor": "enabled"}, False, True, []),
    ({"serviceMonitor": "auto"}, False, False, []),
    ({"serviceMonitor": "auto", "interval": "30s"}, False, False, ["ScrapeIntervalIgnored"]),
    ({"serviceMonitor": "auto", "interval": "30s"}, False, True, []),
    ({"serviceMonitor": "disabled", "interval": "30s"}, False, False, []),
    ({}, True, False, ["GatewayAPIUnavailable"]),
    ({}, True, True, []),
    ({"serviceMonitor": "enabled", "interval": "1m"}, True, False,
     ["ServiceMonitorUnavailable", "ScrapeIntervalIgnored", "GatewayAPIUnavailable"]),
])
def test_fields_that_cannot_act_are_named(monitoring: dict[str, str], gateway: bool,
                                          served: bool, reasons: list[str]) -> None:
    from msv_operator import reconcile

    extra: dict[str, Any] = {"monitoring": monitoring}
    if gateway:
        extra["gateway"] = {"parentRefs": [{"name": "gw"}]}
    opts = b.BuildOptions(images=uniform_images("i", "g"), service_monitor=served,
                          gateway_api=served, gateway_retry=served)
    got = reconcile.ignored_fields(parse_spec(ms(**extra)), opts)
    assert [r for r, _ in got] == reasons
    fields = {"ServiceMonitorUnavailable": "spec.monitoring.serviceMonitor",
              "ScrapeIntervalIgnored": "spec.monitoring.interval",
              "GatewayAPIUnavailable": "spec.gateway"}
    for reason, message in got:
        assert message.startswith(fields[reason] + ":"), message
        assert "; " not in message, "'; ' separates the entries of the condition message"


@pytest.mark.parametrize(("server", "served", "reasons"), [
    ({"tls": {"secretName": "t"}}, False, ["ScrapeTLSUnverified"]),
    ({"tls": {"secretName": "t"}}, True, []),
    ({"auth": {"tokenSecret": "k"}}, False, []),  # /metrics stays open: nothing to present
    ({"auth": {"tokenSecret": "k", "protectMetrics": True}, "tls": {"secretName": "t"}}, False,
     ["ScrapeTLSUnverified", "ScrapeTokenUnavailable"]),
    ({"auth": {"tokenSecret": "k", "protectMetrics": True}}, True, []),
])
def test_scrape_security_the_annotations_cannot_carry_is_named(
        server: dict[str, Any], served: bool, reasons: list[str]) -> None:
    from msv_operator import reconcile

    opts = b.BuildOptions(images=uniform_images("i"), service_monitor=served,
                          gateway_api=False)
    got = reconcile.ignored_fields(parse_spec(ms(server=server)), opts)
    assert [r for r, _ in got] == reasons
    fields = {"ScrapeTLSUnverified": "spec.server.tls.secretName",
              "ScrapeTokenUnavailable": "spec.server.auth.protectMetrics"}
    for reason, message in got:
        assert message.startswith(fields[reason] + ":"), message
        assert "; " not in message
    disabled = reconcile.ignored_fields(
        parse_spec(ms(server=server, monitoring={"serviceMonitor": "disabled"})), opts)
    assert disabled == []  # no scraping asked for: nothing is ignored


# ---- effective weights and the rollout mirror -----------------------------------------------

def rollout_ms() -> dict[str, Any]:
    return ms(variants=[{"name": "baseline"}, {"name": "int8"}],
              traffic=[{"variant": "baseline", "weight": 100}], replicas=4,
              gateway={"parentRefs": [{"name": "gw"}]},
              rollout={"candidate": "int8", "analysis": {"mirrorPercent": 20}})


def test_effective_weights_drive_route_and_replicas_but_never_roll_the_pods() -> None:
    body = rollout_ms()
    spec = parse_spec(body)
    opts = b.BuildOptions(uniform_images("ms:cpu"), service_monitor=False, gateway_api=True)
    objs = b.build_all(body, opts, spec, b.Serving({"baseline": 75, "int8": 25}))
    route = by_kind(objs, "HTTPRoute")["sentiment"]
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "sentiment-baseline", "port": 80, "weight": 75},
        {"name": "sentiment-int8", "port": 80, "weight": 25}]
    deps = by_kind(objs, "Deployment")
    assert deps["sentiment-baseline"]["spec"]["replicas"] == 3
    assert deps["sentiment-int8"]["spec"]["replicas"] == 1
    # The pod templates follow spec.traffic (the reconciler relabels the running pods), so
    # a rollout step, a rollback or a brownout changes no template and restarts no pod.
    plain = by_kind(b.build_all(body, opts), "Deployment")
    for name in ("sentiment-baseline", "sentiment-int8"):
        assert deps[name]["spec"]["template"] == plain[name]["spec"]["template"]
    assert plain["sentiment-int8"]["spec"]["template"]["metadata"]["labels"][
        b.LABEL_SERVING] == "false"
    assert plain["sentiment-baseline"]["spec"]["template"]["metadata"]["labels"][
        b.LABEL_SERVING] == "true"
    promoted = by_kind(b.build_all(body, opts, spec, b.Serving({"baseline": 0, "int8": 100})),
                       "Deployment")
    assert promoted["sentiment-baseline"]["spec"]["template"] == plain[
        "sentiment-baseline"]["spec"]["template"]
    # without a Serving the spec's weights apply: the candidate keeps one warm pod, unserved
    assert b.variant_replicas(spec, {"baseline": 0, "int8": 100}) == {"baseline": 1, "int8": 4}


def test_mirror_marks_only_the_stable_pods_and_no_template_ever_changes() -> None:
    body = rollout_ms()
    spec = parse_spec(body)
    mirror = b.Mirror("http://10.96.0.7:80", 20, "int8")
    step1 = b.Serving({"baseline": 90, "int8": 10}, mirror)
    marks = b.pod_marks(spec, step1)
    assert marks["baseline"] == b.PodMarks("true", '{"percent":20,"url":"http://10.96.0.7:80",'
                                                   '"variant":"int8"}')
    assert marks["int8"] == b.PodMarks("true", None)
    assert b.pod_marks(spec, b.Serving({"baseline": 100, "int8": 0})) == {
        "baseline": b.PodMarks("true"), "int8": b.PodMarks("false")}
    # The server reads the annotation through the downward API: every variant's template
    # mounts it and names the file, whether or not a rollout is under way.
    plain = by_kind(b.build_all(body, OPTS, spec), "Deployment")
    for serving in (step1, b.Serving({"baseline": 50, "int8": 50}, mirror)):
        deps = by_kind(b.build_all(body, OPTS, spec, serving), "Deployment")
        for name in ("sentiment-baseline", "sentiment-int8"):
            assert deps[name]["spec"]["template"] == plain[name]["spec"]["template"]
    pod = plain["sentiment-baseline"]["spec"]["template"]["spec"]
    assert b.PODINFO_VOLUME in pod["volumes"]
    assert {"name": "podinfo", "mountPath": b.PODINFO_DIR, "readOnly": True} in pod[
        "containers"][0]["volumeMounts"]
    env = env_of(plain["sentiment-baseline"])
    assert env["MODEL_SERVER_MIRROR_FILE"] == f"{b.PODINFO_DIR}/annotations"
    assert "MODEL_SERVER_MIRROR_URL" not in env


def server_container(spec: dict[str, Any]) -> dict[str, Any]:
    dep = by_kind(b.build_all(spec, OPTS), "Deployment")["sentiment-baseline"]
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


def test_startup_probe_asks_ready_every_second_for_the_startup_timeout() -> None:
    c = server_container(ms())
    startup = c["startupProbe"]
    # the server holds each answer up to 0.8 s while loading: under the probe's 1 s timeout
    assert startup["httpGet"] == {"path": "/v2/health/ready?wait=0.8", "port": "http",
                                  "scheme": "HTTP"}
    assert startup["periodSeconds"] == b.STARTUP_PROBE_PERIOD_SECONDS == 1
    assert b.STARTUP_PROBE_WAIT_SECONDS < startup["timeoutSeconds"] == 1
    # the default budget: 30 minutes of one probe a second
    assert startup["failureThreshold"] * startup["periodSeconds"] == 30 * 60
    # steady state after the start: readiness and liveness keep their periods; liveness needs
    # no initial delay, the kubelet runs it only once the startup probe succeeded
    assert (c["readinessProbe"]["periodSeconds"], c["readinessProbe"]["failureThreshold"]) == (
        5, 3)
    assert (c["livenessProbe"]["periodSeconds"], c["livenessProbe"]["failureThreshold"]) == (
        10, 6)
    assert "initialDelaySeconds" not in c["livenessProbe"]
    # readiness answers at once (no wait): a draining or overloaded pod leaves at once
    assert c["readinessProbe"]["httpGet"] == {**startup["httpGet"], "path": "/v2/health/ready"}


@pytest.mark.parametrize(("timeout", "threshold"), [("10s", 10), ("2m", 120), ("2h", 7200)])
def test_startup_timeout_sets_the_startup_probe_budget(timeout: str, threshold: int) -> None:
    c = server_container(ms(server={"startupTimeout": timeout}))
    assert c["startupProbe"]["failureThreshold"] == threshold
