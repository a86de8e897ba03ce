"""localcluster.gateway.install: the manifests of the local cluster's gateway, and what the
gateway image runs needing nothing of the host side (and carrying the retry budget's Lua)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from localcluster import images
from localcluster.gateway import install
from localcluster.gateway.controller import KINDS
from localcluster.gateway.render import CONTROLLER_NAME, LUA_DIR, LUA_MODULE
from localcluster.images import recipes, steps

REPO = Path(__file__).resolve().parents[2]


def _by_kind(items: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for obj in items:
        out.setdefault(obj["kind"], []).append(obj)
    return out


def test_the_gateway_class_gateway_and_fixed_service() -> None:
    items = install.manifests()["items"]
    by = _by_kind(items)
    (gc,) = by["GatewayClass"]
    assert gc["metadata"]["name"] == "modelservice-nginx"
    assert gc["spec"]["controllerName"] == CONTROLLER_NAME == "modelservice.dev/nginx-gateway"
    (gw,) = by["Gateway"]
    assert (gw["metadata"]["namespace"], gw["metadata"]["name"]) == ("msv-gateway", "msv-gateway")
    assert gw["spec"]["gatewayClassName"] == "modelservice-nginx"
    assert gw["spec"]["listeners"] == [{"name": "http", "port": 80, "protocol": "HTTP",
                                        "allowedRoutes": {"namespaces": {"from": "All"}}}]
    (svc,) = by["Service"]
    assert svc["spec"]["clusterIP"] == install.SERVICE_IP == "10.96.0.70"
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == \
        {"http": (80, "http"), "metrics": (8080, "metrics")}
    assert install.parent_ref() == {"name": "msv-gateway", "namespace": "msv-gateway",
                                    "sectionName": "http"}
    assert "ServiceMonitor" not in by
    assert _by_kind(install.manifests(service_monitor=True)["items"])["ServiceMonitor"]


def test_one_ready_checked_pod_on_the_real_node_binding_port_80_unprivileged() -> None:
    (dep,) = _by_kind(install.manifests()["items"])["Deployment"]
    spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 1
    assert spec["nodeSelector"] == {"type": "real"}
    (c,) = spec["containers"]
    assert c["image"] == images.image_ref("gateway")
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "--ports=80" in c["args"] and "--service=msv-gateway/msv-gateway" in c["args"]
    assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"]
    assert {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"} in \
        spec["securityContext"]["sysctls"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert "/run/msv-gateway" in mounts and "/tmp" in mounts


def test_rbac_reads_what_the_controller_watches_and_writes_only_status() -> None:
    by = _by_kind(install.manifests()["items"])
    (role,) = by["ClusterRole"]
    (binding,) = by["ClusterRoleBinding"]
    (sa,) = by["ServiceAccount"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]
    (dep,) = by["Deployment"]
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    for kind in KINDS:
        for verb in ("list", "watch"):
            assert (kind.group, kind.name, verb) in granted, (kind.name, verb)
        if kind.status:
            assert (kind.group, f"{kind.name}/status", "update") in granted
    writes = {r for g, r, v in granted if v in ("create", "update", "patch", "delete")}
    assert all(r.endswith("/status") for r in writes), writes


def test_the_image_entry_point_imports_nothing_of_the_host_side() -> None:
    code = ("import sys, localcluster.gateway.__main__; "
            "print(__import__('json').dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('localcluster', 'msv_contract', 'msv_operator', "
            "'model_server', 'yaml', 'kopf'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=REPO)
    loaded = json.loads(proc.stdout)
    assert loaded == ["localcluster", "localcluster.gateway", "localcluster.gateway.__main__",
                      "localcluster.gateway.controller", "localcluster.gateway.nginx",
                      "localcluster.gateway.render"]


def test_a_bad_flag_is_one_line_and_exit_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "localcluster.gateway", "--ports", "80,x"],
                          capture_output=True, text=True, check=False, cwd=REPO)
    assert proc.returncode == 2
    assert "'80,x' is not a comma-separated list of ports" in proc.stderr.splitlines()[-1]


def test_a_rebuilt_image_rolls_the_pod_through_its_digest_annotation() -> None:
    def template(digest: str | None) -> dict[str, Any]:
        items = install.manifests(digest=digest)["items"]
        dep = next(o for o in items if o["kind"] == "Deployment")
        return dep["spec"]["template"]["metadata"]  # type: ignore[no-any-return]

    assert template("sha256:aa")["annotations"] == {install.IMAGE_DIGEST: "sha256:aa"}
    assert template("sha256:bb") != template("sha256:aa")
    assert "annotations" not in template(None)


def test_the_gateway_images_wheel_carries_the_retry_budgets_lua(tmp_path: Path) -> None:
    (step,) = [st for st in recipes.recipes()["gateway"].steps if st.kind == "package"]
    whl = steps._wheel([REPO / d for d in step.args], tmp_path)  # as the image's layer makes it
    lua = f"localcluster/gateway/{LUA_MODULE}.lua"
    with zipfile.ZipFile(whl) as z:
        assert z.read(lua) == (Path(LUA_DIR) / f"{LUA_MODULE}.lua").read_bytes()
    assert "libnginx-mod-http-lua" in recipes.GATEWAY_PACKAGES
