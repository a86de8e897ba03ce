"""localcluster.gateway.render: Gateway API objects -> nginx configuration and status (pure).

The configuration is read back here as text (which map line routes where, which split,
which retry directives); tests/e2e/test_gateway_nginx.py runs the same renderings in a real
nginx and measures where requests go.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest
from gateway_objects import (
    backend,
    budget,
    endpoint_slice,
    gateway,
    gateway_class,
    listener,
    objects,
    policy,
    route,
    rule,
    service,
)

from localcluster.gateway import render
from localcluster.gateway.render import CONTROLLER_NAME, Options

OPTS = Options(runtime_dir="/run/gw", addresses=("10.96.0.70",))


def _svc(name: str, *ips: str | tuple[str, bool], port: int = 8080) -> list[dict[str, Any]]:
    return [service(name), endpoint_slice(name, list(ips), port)]


def _render(*items: Any, gw: dict[str, Any] | None = None,
            opts: Options = OPTS) -> render.Rendered:
    return render.render(objects(gateway_class(), gw or gateway([listener(80)]), *items), opts)


def _conds(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in entry["conditions"]}


def _parent(out: render.Rendered, key: tuple[str, str] = ("app", "route")) -> dict[str, Any]:
    (p,) = out.routes[key]
    return p


def _block(config: str, start: str) -> str:
    """The text of the block whose first line contains ``start`` (up to its closing brace)."""
    lines = config.splitlines()
    i = next(n for n, ln in enumerate(lines) if start in ln)
    depth, out = 0, []
    for ln in lines[i:]:
        out.append(ln)
        depth += ln.count("{") - ln.count("}")
        if depth <= 0:
            break
    return "\n".join(out)


def _routing_map(config: str, server: int = 0) -> list[tuple[str, str]]:
    """(regex, named location) of server ``server``'s map, in order."""
    block = _block(config, f"$msv_s{server} {{")
    return re.findall(r'^\s+"~\(\?s\)\^([^"]*)" (msv_r\d+);', block, re.M)


# -- weights ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("weights", "shares"), [
    ([10, 90], [1000, 9000]),
    ([1, 1, 1], [3333, 3334, 3333]),
    ([0, 5], [0, 10000]),
    ([1, 0, 2], [3333, 0, 6667]),
    ([0, 0], [0, 0]),
    ([1, 1000000], [0, 10000]),
])
def test_weights_become_shares_in_hundredths_of_a_percent(weights: list[int],
                                                            shares: list[int]) -> None:
    assert render.split(weights) == shares
    assert sum(shares) in (0, 10000)


def test_a_10_90_route_splits_each_request_by_request_id() -> None:
    out = _render(route([rule([backend("canary", weight=10), backend("stable", weight=90)])]),
                  *_svc("canary", "10.0.0.1"), *_svc("stable", "10.0.0.2", "10.0.0.3"))
    split = _block(out.config, 'split_clients "$request_id" $msv_b0')
    assert "10.00% msv_u0_0;" in split and "* msv_u0_1;" in split
    # The stable side's two pods are one upstream: its share does not depend on pod counts.
    assert "server 10.0.0.2:8080" in _block(out.config, "upstream msv_u0_1")
    assert "server 10.0.0.3:8080" in _block(out.config, "upstream msv_u0_1")
    assert "server 10.0.0.1:8080" in _block(out.config, "upstream msv_u0_0")
    loc = _block(out.config, "location @msv_r0")
    assert "proxy_pass http://$msv_b0$request_uri;" in loc
    assert out.backends == {("app", "canary", 80): 1, ("app", "stable", 80): 2}


def test_weight_zero_gets_no_traffic_and_all_zero_answers_500() -> None:
    out = _render(route([rule([backend("a", weight=0), backend("b", weight=3)]),
                         rule([backend("a", weight=0)], path="/zero")]),
                  *_svc("a", "10.0.0.1"), *_svc("b", "10.0.0.2"))
    split = _block(out.config, "$msv_b0 {")
    assert "msv_u0_0" not in split and "* msv_u0_1;" in split
    assert "return 500;" in _block(out.config, "location @msv_r1")
    assert "$msv_b1 {" not in out.config


def test_every_upstream_keeps_connections_and_streams() -> None:
    out = _render(route([rule([backend("a")])]), *_svc("a", "10.0.0.1"))
    up = _block(out.config, "upstream msv_u0_0")
    assert "keepalive 16;" in up and "keepalive_timeout 4s;" in up
    for directive in ("proxy_http_version 1.1;", 'proxy_set_header Connection "";',
                      "proxy_buffering off;", "client_max_body_size 64m;"):
        assert directive in out.config


def test_endpoints_are_the_ready_pod_ips_on_the_services_target_port() -> None:
    slices = [
        endpoint_slice("a", ["10.0.0.1", ("10.0.0.9", False)], 8080),
        {**endpoint_slice("a", ["fd00::5"], 8080, name="a-v6"), "addressType": "IPv6"},
        endpoint_slice("a", ["not-an-ip"], 8080, name="a-bad"),
        endpoint_slice("a", ["10.0.0.7"], 9000, port_name="metrics", name="a-other-port"),
    ]
    out = _render(route([rule([backend("a")])]), service("a"), *slices)
    up = _block(out.config, "upstream msv_u0_0")
    assert re.findall(r"server (\S+) ", up) == ["10.0.0.1:8080", "[fd00::5]:8080"]


# -- missing and unresolved backends -----------------------------------------------------------


def test_a_backend_without_ready_endpoints_answers_503_for_its_share() -> None:
    out = _render(route([rule([backend("stable", weight=90), backend("canary", weight=10)])]),
                  *_svc("stable", "10.0.0.2"), *_svc("canary", ("10.0.0.1", False)))
    split = _block(out.config, "$msv_b0 {")
    assert "90.00% msv_u0_0;" in split and "* 503;" in split  # not re-spread onto stable
    loc = _block(out.config, "location @msv_r0")
    assert 'if ($msv_b0 = "503") { return 503; }' in loc
    resolved = _conds(_parent(out))["ResolvedRefs"]
    assert resolved["status"] == "True"
    assert "Service app/canary:80 has no ready endpoints; its share answers 503" in \
        resolved["message"]
    assert out.backends[("app", "canary", 80)] == 0


def test_an_unknown_service_is_backend_not_found_and_its_share_answers_500() -> None:
    out = _render(route([rule([backend("stable"), backend("gone")])]),
                  *_svc("stable", "10.0.0.2"))
    resolved = _conds(_parent(out))["ResolvedRefs"]
    assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")
    assert "spec.rules[0].backendRefs[1]: Service app/gone not found" in resolved["message"]
    assert "* 500;" in _block(out.config, "$msv_b0 {")
    assert _conds(_parent(out))["Accepted"]["status"] == "True"


@pytest.mark.parametrize(("ref", "reason", "words"), [
    (backend("a", port=81), "BackendNotFound", "Service app/a has no port 81 (ports: 80)"),
    (backend("a", namespace="other"), "RefNotPermitted", "ReferenceGrant"),
    (backend("a", kind="ServiceImport", group="multicluster.x-k8s.io"), "InvalidKind",
     "only core Services"),
])
def test_backends_that_do_not_resolve_are_named(ref: dict[str, Any], reason: str,
                                                words: str) -> None:
    out = _render(route([rule([ref])]), *_svc("a", "10.0.0.1"))
    resolved = _conds(_parent(out))["ResolvedRefs"]
    assert (resolved["status"], resolved["reason"]) == ("False", reason)
    assert words in resolved["message"]
    assert "return 500;" in _block(out.config, "location @msv_r0")


# -- matches and precedence ---------------------------------------------------------------------


def test_a_header_match_outranks_the_same_path_without_headers() -> None:
    out = _render(route([rule([backend("stable")]),
                         rule([backend("canary")], headers={"X-MSV-Variant": "canary"})]),
                  *_svc("stable", "10.0.0.2"), *_svc("canary", "10.0.0.1"))
    assert 'map $http_x_msv_variant $msv_h0 { "~^canary\\z" 1; default 0; }' in out.config
    assert _routing_map(out.config) == [
        (r"1:[A-Z_-]+:\x2f.*\z", "msv_r1"),  # header bit set: the canary rule
        (r".:[A-Z_-]+:\x2f.*\z", "msv_r0"),
    ]


def test_precedence_exact_then_longest_prefix_then_method_then_headers() -> None:
    rules = [
        rule([backend("a")], path="/v2"),
        rule([backend("a")], path="/v2/models", headers={"x-a": "1"}),
        rule([backend("a")], path="/v2/models"),
        rule([backend("a")], path="/v2/models/m/infer", exact=True),
        {**rule([backend("a")]), "matches": [{"path": {"type": "PathPrefix",
                                                        "value": "/v2/models"},
                                               "method": "POST"}]},
    ]
    out = _render(route(rules), *_svc("a", "10.0.0.1"))
    assert [loc for _rx, loc in _routing_map(out.config)] == \
        ["msv_r3", "msv_r4", "msv_r1", "msv_r2", "msv_r0"]
    exact = _routing_map(out.config)[0][0]
    assert exact.endswith(r"\x2fv2\x2fmodels\x2fm\x2finfer\z")  # exact: no suffix allowed
    assert _routing_map(out.config)[-1][0].endswith(r"\x2fv2(\x2f.*)?\z")  # prefix by element
    assert "POST:" in _routing_map(out.config)[1][0]


def test_ties_go_to_the_oldest_route_then_by_name() -> None:
    routes = [
        route([rule([backend("a")])], name="b-newer", created="2026-02-01T00:00:00Z"),
        route([rule([backend("a")])], name="c-old", created="2026-01-01T00:00:00Z"),
        route([rule([backend("a")])], name="a-old", created="2026-01-01T00:00:00Z"),
    ]
    out = _render(*routes, *_svc("a", "10.0.0.1"))
    names = re.findall(r"# app/(\S+) rules", _block(out.config, "$msv_s0 {"))
    assert names == ["a-old", "c-old", "b-newer"]


def test_hostnames_get_their_own_servers_exact_before_wildcard_before_any() -> None:
    routes = [
        route([rule([backend("a")])], name="any"),
        route([rule([backend("b")])], name="wild", hostnames=["*.example.com"]),
        route([rule([backend("c")])], name="exact", hostnames=["m.example.com"]),
    ]
    out = _render(*routes, *_svc("a", "10.0.0.1"), *_svc("b", "10.0.0.2"),
                  *_svc("c", "10.0.0.3"))
    servers = re.findall(r"server_name (\S+);", out.config)
    assert servers == ["_", "*.example.com", "m.example.com"]
    by_server = {name: re.findall(r"# app/(\S+) rules", _block(out.config, f"$msv_s{i} {{"))
                 for i, name in enumerate(servers)}
    assert by_server == {"_": ["any"], "*.example.com": ["wild", "any"],
                         "m.example.com": ["exact", "wild", "any"]}


def test_a_route_on_two_listeners_is_routed_once_per_server_at_its_best_rank() -> None:
    gw = gateway([listener(80), listener(80, name="api", hostname="api.example.com")])
    out = _render(route([rule([backend("a")])], name="both"),
                  route([rule([backend("a")])], name="api-only", sectionName="api",
                        created="2025-01-01T00:00:00Z"),
                  *_svc("a", "10.0.0.1"), gw=gw)
    servers = re.findall(r"server_name (\S+);", out.config)
    assert servers == ["_", "api.example.com"]
    assert re.findall(r"# app/(\S+) rules", _block(out.config, "$msv_s0 {")) == ["both"]
    # On api.example.com both routes match the same host and path: the older one first.
    assert re.findall(r"# app/(\S+) rules", _block(out.config, "$msv_s1 {")) == \
        ["api-only", "both"]
    listeners = {lis["name"]: lis["attachedRoutes"]
                 for lis in out.gateways[("gw", "gw")]["listeners"]}
    assert listeners == {"http": 1, "api": 2}


def test_listener_and_route_hostnames_intersect() -> None:
    f = render.intersect_hostnames
    assert f(None, []) == ["*"]
    assert f("a.example.com", []) == ["a.example.com"]
    assert f("*.example.com", ["a.example.com", "other.org", "*.b.example.com"]) == \
        ["a.example.com", "*.b.example.com"]
    assert f("a.example.com", ["*.example.com"]) == ["a.example.com"]
    assert f("example.com", ["*.example.com"]) == []


def test_a_request_matching_no_rule_is_404() -> None:
    out = _render(route([rule([backend("a")], path="/v2")]), *_svc("a", "10.0.0.1"))
    assert "default msv_nomatch;" in _block(out.config, "$msv_s0 {")
    assert "location @msv_nomatch { return 404; }" in out.config
    # A listener port with no route at all still answers (404) on its socket.
    empty = _render()
    assert "listen unix:/run/gw/listener-80.sock default_server;" in empty.config


def test_the_same_objects_in_any_order_render_the_same_text() -> None:
    items = [route([rule([backend("a")], headers={"x-v": "1"})], name="r1"),
             route([rule([backend("b", weight=3), backend("a")])], name="r2",
                   hostnames=["h.example.com"]),
             *_svc("a", "10.0.0.1", "10.0.0.5"), *_svc("b", "10.0.0.2"),
             policy(["a"], name="p1", retryConstraint=budget(percent=1)),
             policy(["a", "b"], name="p2", retryConstraint=budget(percent=2))]
    first = _render(*items)
    for seed in range(3):
        shuffled = list(items)
        random.Random(seed).shuffle(shuffled)
        again = _render(*shuffled)
        assert again.config == first.config
        assert again.policies == first.policies


# -- retries ------------------------------------------------------------------------------------


def _loc(*rules_: dict[str, Any]) -> str:
    out = _render(route(list(rules_)), *_svc("a", "10.0.0.1", "10.0.0.2"))
    return _block(out.config, "location @msv_r0")


def test_without_retry_one_retry_on_connection_errors_only() -> None:
    loc = _loc(rule([backend("a")]))
    assert "proxy_next_upstream error timeout non_idempotent;" in loc
    assert "proxy_next_upstream_tries 2;" in loc
    assert "http_503" not in loc


def test_retry_attempts_and_codes_become_next_upstream() -> None:
    loc = _loc(rule([backend("a")], retry={"attempts": 3, "codes": [503, 502]}))
    assert "proxy_next_upstream error timeout http_502 http_503 non_idempotent;" in loc
    assert "proxy_next_upstream_tries 4;" in loc
    # No codes named: 503.
    assert "error timeout http_503 non_idempotent;" in _loc(rule([backend("a")], retry={}))
    assert "proxy_next_upstream_tries 3;" in _loc(rule([backend("a")], retry={}))
    assert "proxy_next_upstream off;" in _loc(rule([backend("a")], retry={"attempts": 0}))


def test_retry_attempts_are_capped_and_the_cap_is_said() -> None:
    out = _render(route([rule([backend("a")], retry={"attempts": 50})]), *_svc("a", "10.0.0.1"))
    assert f"proxy_next_upstream_tries {render.MAX_ATTEMPTS + 1};" in out.config
    accepted = _conds(_parent(out))["Accepted"]
    assert accepted["status"] == "True"
    assert "spec.rules[0].retry.attempts 50 capped at 5" in accepted["message"]
    assert "proxy_next_upstream_timeout 30s;" in out.config


def test_backoff_keeps_a_failed_endpoint_out_for_that_long() -> None:
    assert "fail_timeout=1s" in _render(route([rule([backend("a")])]),
                                        *_svc("a", "10.0.0.1")).config
    out = _render(route([rule([backend("a")], retry={"backoff": "2500ms"})]),
                  *_svc("a", "10.0.0.1"))
    assert "server 10.0.0.1:8080 max_fails=1 fail_timeout=3s;" in out.config
    assert render.duration_seconds("1m30s") == 90
    with pytest.raises(ValueError, match="not a Gateway API duration"):
        render.duration_seconds("1d")


def test_a_retry_code_nginx_cannot_express_leaves_the_rule_out() -> None:
    out = _render(route([rule([backend("a")], path="/ok"),
                         rule([backend("a")], retry={"codes": [599]})]),
                  *_svc("a", "10.0.0.1"))
    conds = _conds(_parent(out))
    assert conds["Accepted"]["status"] == "True"
    assert conds["PartiallyInvalid"]["status"] == "True"
    assert "spec.rules[1].retry.codes: 599 is not supported" in conds["PartiallyInvalid"]["message"]
    assert [loc for _rx, loc in _routing_map(out.config)] == ["msv_r0"]


# -- bad input and sanitising ------------------------------------------------------------------


@pytest.mark.parametrize(("bad_rule", "words"), [
    (rule([backend("a")], headers={"x_under": "1"}), "matches[0].headers[0].name"),
    (rule([backend("a")], headers={"x-v": "a\nb"}), "matches[0].headers[0].value"),
    ({**rule([backend("a")]), "matches": [{"path": {"type": "RegularExpression",
                                                    "value": ".*"}}]},
     "matches[0].path.type: RegularExpression is not supported"),
    ({**rule([backend("a")]), "matches": [{"path": {"type": "PathPrefix",
                                                    "value": "/a b"}}]},
     "matches[0].path.value"),
    ({**rule([backend("a")]), "matches": [{"path": {"type": "PathPrefix",
                                                    "value": "/a/../b"}}]},
     "'.' and '..' segments"),
    ({**rule([backend("a")]), "matches": [{"queryParams": [{"name": "q", "value": "1"}]}]},
     "queryParams"),
    ({**rule([backend("a")]), "filters": [{"type": "RequestHeaderModifier"}]},
     "spec.rules[0].filters: not supported"),
    ({**rule([backend("a")]), "timeouts": {"request": "10s"}}, "spec.rules[0].timeouts"),
    (rule([backend("a", weight=-1)]), "backendRefs[0].weight"),
    (rule([backend("a")], retry={"backoff": "soon"}), "retry.backoff"),
])
def test_a_rule_with_unsupported_or_unsafe_input_is_refused_by_field(
        bad_rule: dict[str, Any], words: str) -> None:
    out = _render(route([bad_rule]), *_svc("a", "10.0.0.1"))
    accepted = _conds(_parent(out))["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", "UnsupportedValue")
    assert words in accepted["message"]
    assert "location @msv_r" not in out.config


def test_request_and_object_text_never_reaches_the_config_as_syntax() -> None:
    evil = 'x"; } server { listen 1; } #'
    out = _render(
        route([rule([backend("a")], path="/p;$x", headers={"x-v": evil})],
              hostnames=["safe.example.com"]),
        *_svc("a", "10.0.0.1"))
    assert _conds(_parent(out))["Accepted"]["status"] == "True"
    # Values appear only hex-escaped; nothing of them as nginx syntax.
    assert evil not in out.config and "listen 1;" not in out.config and "$x" not in out.config
    assert "\\x22\\x3b\\x20\\x7d" in out.config  # '"; }' of the header value
    assert "\\x2fp\\x3b\\x24x" in out.config  # '/p;$x' of the path
    # Names in comments are reduced to safe characters.
    assert render._comment('a"\n;{b}') == "a____b_"
    # Hostnames and a listen address that are not names are refused.
    bad = _render(route([rule([backend("a")])], hostnames=["a;b.example.com"]),
                  *_svc("a", "10.0.0.1"))
    assert _conds(_parent(bad))["Accepted"]["reason"] == "UnsupportedValue"
    with pytest.raises(ValueError, match="not an IP address"):
        render.edge_config(Options(runtime_dir="/r", listen_address="0.0.0.0; evil"))


def test_the_edge_listens_on_the_served_ports_and_retries_only_unsent_requests() -> None:
    edge = render.edge_config(Options(runtime_dir="/run/gw", ports=frozenset({80, 8000}),
                                      listen_address="127.0.0.1"))
    assert "listen 127.0.0.1:80 default_server;" in edge
    assert "listen 127.0.0.1:8000 default_server;" in edge
    assert "server unix:/run/gw/listener-80.sock;" in edge
    assert "proxy_next_upstream error non_idempotent;" in edge  # no timeout: never doubles
    assert "pid /run/gw/edge.pid;" in edge and "pid /run/gw/routing.pid;" in _render().config


# -- status -------------------------------------------------------------------------------------


def test_gateway_class_gateway_and_route_status() -> None:
    out = render.render(objects(
        gateway_class(), gateway_class("theirs", controller="example.com/other"),
        gateway([listener(80), listener(443, name="https", protocol="HTTPS")], generation=4),
        gateway([listener(80)], name="elsewhere", cls="theirs"),
        route([rule([backend("a")])], generation=7),
        route([rule([backend("a")])], name="foreign", parent="elsewhere"),
        *_svc("a", "10.0.0.1")), OPTS)
    assert out.gateway_classes == {"msv-test": {"conditions": [render.condition(
        "Accepted", True, "Accepted", f"accepted by {CONTROLLER_NAME}", 1)]}}
    st = out.gateways[("gw", "gw")]
    assert list(out.gateways) == [("gw", "gw")]  # not the other class's Gateway
    assert st["addresses"] == [{"type": "IPAddress", "value": "10.96.0.70"}]
    conds = _conds(st)
    assert (conds["Accepted"]["status"], conds["Accepted"]["reason"]) == \
        ("True", "ListenersNotValid")
    assert conds["Programmed"]["status"] == "True"
    assert conds["Accepted"]["observedGeneration"] == 4
    http, https = st["listeners"]
    assert http["attachedRoutes"] == 1 and http["supportedKinds"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}]
    assert _conds(https)["Accepted"]["reason"] == "UnsupportedProtocol"
    parent = _parent(out)
    assert parent["controllerName"] == CONTROLLER_NAME
    assert parent["parentRef"] == {"name": "gw", "namespace": "gw"}
    assert _conds(parent)["Accepted"]["observedGeneration"] == 7
    assert ("app", "foreign") not in out.routes  # its parent is not ours
    assert out.attached_routes == 1


@pytest.mark.parametrize(("gw", "ref", "reason"), [
    (gateway([listener(80)]), {"sectionName": "nope"}, "NoMatchingParent"),
    (gateway([listener(80)]), {"port": 8080}, "NoMatchingParent"),
    (gateway([listener(80, namespaces="Same")]), {}, "NotAllowedByListeners"),
    (gateway([listener(80, hostname="a.example.com")]), {"hostnames": ["b.example.com"]},
     "NoMatchingListenerHostname"),
    (gateway([listener(8080)]), {}, "NoMatchingParent"),  # a port the data plane lacks
])
def test_a_route_a_gateway_does_not_take_says_why(gw: dict[str, Any], ref: dict[str, Any],
                                                  reason: str) -> None:
    out = _render(route([rule([backend("a")])], **ref), *_svc("a", "10.0.0.1"), gw=gw)
    accepted = _conds(_parent(out))["Accepted"]
    assert (accepted["status"], accepted["reason"]) == ("False", reason)
    assert "location @msv_r" not in out.config
    assert out.attached_routes == 0


def test_a_listener_selector_admits_labelled_namespaces() -> None:
    sel = {"from": "Selector", "selector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["app"]}]}}
    lis = {**listener(80), "allowedRoutes": {"namespaces": sel}}
    out = _render(route([rule([backend("a")])]), route([rule([backend("a")])], namespace="x"),
                  *_svc("a", "10.0.0.1"), gw=gateway([lis]))
    assert _conds(_parent(out))["Accepted"]["status"] == "True"
    assert _conds(_parent(out, ("x", "route")))["Accepted"]["reason"] == "NotAllowedByListeners"


def test_a_port_the_data_plane_does_not_serve_is_port_unavailable() -> None:
    out = _render(gw=gateway([listener(8080)]))
    (lis,) = out.gateways[("gw", "gw")]["listeners"]
    assert _conds(lis)["Accepted"]["reason"] == "PortUnavailable"
    assert "ports: 80" in _conds(lis)["Accepted"]["message"]
    assert _conds(out.gateways[("gw", "gw")])["Accepted"]["status"] == "False"


def test_a_gateway_class_with_parameters_is_not_accepted() -> None:
    out = render.render(objects(
        gateway_class(parametersRef={"group": "", "kind": "ConfigMap", "name": "x"}),
        gateway([listener(80)])), OPTS)
    assert out.gateway_classes["msv-test"]["conditions"][0]["reason"] == "InvalidParameters"
    assert _conds(out.gateways[("gw", "gw")])["Accepted"]["status"] == "False"


def test_programmed_false_carries_nginxs_message() -> None:
    st = _render().gateways[("gw", "gw")]
    bad = render.programmed_false(st, '[emerg] invalid value "x"')
    assert _conds(bad)["Programmed"]["status"] == "False"
    assert '[emerg] invalid value "x"' in _conds(bad)["Programmed"]["message"]
    assert _conds(bad)["Accepted"] == _conds(st)["Accepted"]
    assert _conds(bad["listeners"][0])["Programmed"]["status"] == "False"


def test_transition_times_change_only_with_the_status() -> None:
    old = [{"type": "Accepted", "status": "True", "lastTransitionTime": "T0"},
           {"type": "Programmed", "status": "True", "lastTransitionTime": "T0"}]
    new = [render.condition("Accepted", True, "Accepted", "m", 2),
           render.condition("Programmed", False, "Invalid", "m", 2),
           render.condition("ResolvedRefs", True, "ResolvedRefs", "m", 2)]
    stamped = render.stamp_conditions(new, old, "T1")
    assert [c["lastTransitionTime"] for c in stamped] == ["T0", "T1", "T1"]


# -- retry budgets ------------------------------------------------------------------------------


def _balance(config: str, upstream: str) -> str:
    """The balancer line of ``upstream``'s block."""
    (line,) = [ln.strip() for ln in _block(config, f"upstream {upstream} ").splitlines()
               if "balancer_by_lua_block" in ln]
    return line


def _ancestors(out: render.Rendered, key: tuple[str, str] = ("app", "budget")
               ) -> list[dict[str, Any]]:
    return out.policies[key]


def _accepted(out: render.Rendered, key: tuple[str, str] = ("app", "budget")) -> dict[str, Any]:
    (entry,) = _ancestors(out, key)
    return _conds(entry)["Accepted"]


def test_every_upstream_counts_against_the_default_budget_in_the_routing_tier_only() -> None:
    out = _render(route([rule([backend("a"), backend("b")])]),
                  *_svc("a", "10.0.0.1"), *_svc("b", "10.0.0.2"))
    head = out.config.split("http {", 1)[0]
    assert head.splitlines()[1:3] == [
        "load_module /usr/lib/nginx/modules/ndk_http_module.so;",
        "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"]
    assert f'lua_package_path "{render.LUA_DIR}/?.lua;;";' in out.config
    assert (Path(render.LUA_DIR) / f"{render.LUA_MODULE}.lua").is_file()
    assert "lua_shared_dict msv_retry_budget 4m;" in out.config
    assert ('init_by_lua_block { require("budget").init("msv_retry_budget", '
            '"/run/gw/retry-budget.sock") }') in out.config
    # The GEP's defaults: 20 % per 10 s, at least 10 retries per 1 s.
    assert render.describe(render.DEFAULT_BUDGET) == \
        "20% of requests per 10s, at least 10 per 1s"
    for upstream, svc in (("msv_u0_0", "a"), ("msv_u0_1", "b")):
        assert _balance(out.config, upstream) == (
            'balancer_by_lua_block { require("budget").balance('
            f'"app/{svc}", 20, 10000, 10, 1000) }}')
        up = _block(out.config, f"upstream {upstream} ").splitlines()
        # the endpoints stay nginx's to pick; keepalive wraps the balancer, so comes after it
        assert next(i for i, ln in enumerate(up) if "balancer_by_lua" in ln) \
            < next(i for i, ln in enumerate(up) if "keepalive 16;" in ln)
        assert any(ln.strip().startswith("server 10.0.0.") for ln in up)
    refused = _block(out.config, "# a retry the backend's budget refused")
    assert "listen unix:/run/gw/retry-budget.sock;" in refused
    assert ("add_header x-msv-retry-budget exhausted always; return 503 "
            '"the backend failed and its retry budget is spent: not retried\\n";') in refused
    status = out.config.split("listen 127.0.0.1:8082;", 1)[1]
    assert status.splitlines()[3].strip() == (
        "location = /msv-retry-budget { default_type application/json; "
        'content_by_lua_block { require("budget").report() } }')
    assert out.policies == {} and out.budgets == {}
    edge = render.edge_config(OPTS)
    assert "lua" not in edge and "load_module" not in edge


def test_a_policy_sets_its_services_budget_and_reports_on_the_gateway() -> None:
    out = _render(route([rule([backend("a"), backend("b")])], generation=3),
                  *_svc("a", "10.0.0.1"), *_svc("b", "10.0.0.2"),
                  policy(["a"], generation=5, retryConstraint=budget(
                      percent=0, interval="1m", count=1, floor="1h")))
    assert _balance(out.config, "msv_u0_0").endswith(
        'balance("app/a", 0, 60000, 1, 3600000) }')
    assert _balance(out.config, "msv_u0_1").endswith(
        'balance("app/b", 20, 10000, 10, 1000) }')  # not targeted: the default
    assert out.budgets == {("app", "a"): render.Budget(0, 60000, 1, 3600000)}
    (entry,) = _ancestors(out)
    assert entry["ancestorRef"] == {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                    "namespace": "gw", "name": "gw"}
    assert entry["controllerName"] == CONTROLLER_NAME
    accepted = _conds(entry)["Accepted"]
    assert (accepted["status"], accepted["reason"], accepted["observedGeneration"]) == \
        ("True", "Accepted", 5)
    assert accepted["message"] == \
        "retry budget 0% of requests per 1m, at least 1 per 1h for Service a"


@pytest.mark.parametrize(("constraint", "want"), [
    (None, render.DEFAULT_BUDGET),
    ({}, render.DEFAULT_BUDGET),
    (budget(percent=50), render.Budget(50, 10000, 10, 1000)),
    (budget(floor="250ms"), render.Budget(20, 10000, 10, 250)),
    (budget(interval="1m30s", count=3), render.Budget(20, 90000, 3, 1000)),
])
def test_what_a_retry_constraint_leaves_out_is_gateway_apis_default(
        constraint: dict[str, Any] | None, want: render.Budget) -> None:
    extra = {} if constraint is None else {"retryConstraint": constraint}
    out = _render(route([rule([backend("a")])]), *_svc("a", "10.0.0.1"), policy(["a"], **extra))
    assert out.budgets == {("app", "a"): want}
    assert _accepted(out)["status"] == "True"


@pytest.mark.parametrize(("constraint", "words"), [
    (budget(percent=101), "spec.retryConstraint.budget.percent: 101 is not 0..100"),
    (budget(percent=True), "spec.retryConstraint.budget.percent"),
    (budget(interval="500ms"), "spec.retryConstraint.budget.interval: 500ms is not 1s..1h"),
    (budget(interval="61m"), "spec.retryConstraint.budget.interval: 61m is not 1s..1h"),
    (budget(interval="soon"), "spec.retryConstraint.budget.interval: 'soon' is not a Gateway"),
    (budget(count=0), "spec.retryConstraint.minRetryRate.count: 0 is not 1..1000000"),
    (budget(floor="0s"), "spec.retryConstraint.minRetryRate.interval: 0s is not 1ms..1h"),
    ("20%", "spec.retryConstraint: not an object"),
])
def test_a_budget_out_of_the_apis_range_is_invalid_by_field(constraint: Any, words: str) -> None:
    out = _render(route([rule([backend("a")])]), *_svc("a", "10.0.0.1"),
                  policy(["a"], retryConstraint=constraint))
    accepted = _accepted(out)
    assert (accepted["status"], accepted["reason"]) == ("False", "Invalid")
    assert words in accepted["message"]
    assert out.budgets == {}  # the Service keeps the default
    assert _balance(out.config, "msv_u0_0").endswith('balance("app/a", 20, 10000, 10, 1000) }')


def test_the_older_policy_wins_a_service_and_the_newer_is_conflicted() -> None:
    older = policy(["a"], name="zz-older", created="2026-01-01T00:00:00Z",
                   retryConstraint=budget(percent=5))
    newer = policy(["a", "b"], name="aa-newer", created="2026-02-01T00:00:00Z",
                   retryConstraint=budget(percent=50))
    only = policy(["a"], name="only-a", created="2026-03-01T00:00:00Z")
    out = _render(route([rule([backend("a"), backend("b")])]),
                  *_svc("a", "10.0.0.1"), *_svc("b", "10.0.0.2"), newer, older, only)
    assert out.budgets == {("app", "a"): render.Budget(5, 10000, 10, 1000),
                           ("app", "b"): render.Budget(50, 10000, 10, 1000)}
    assert _accepted(out, ("app", "zz-older"))["status"] == "True"
    partly = _accepted(out, ("app", "aa-newer"))
    assert (partly["status"], partly["reason"]) == ("True", "Accepted")
    assert partly["message"].startswith("retry budget 50% of requests per 10s, at least 10 "
                                        "per 1s for Service b; spec.targetRefs[0]: Service a "
                                        "has the budget of the older XBackendTrafficPolicy "
                                        "app/zz-older")
    lost = _accepted(out, ("app", "only-a"))
    assert (lost["status"], lost["reason"]) == ("False", "Conflicted")
    assert "Service a has the budget of the older XBackendTrafficPolicy app/zz-older" \
        in lost["message"]
    # Ties on creationTimestamp go to namespace/name.
    tie = _render(route([rule([backend("a")])]), *_svc("a", "10.0.0.1"),
                  policy(["a"], name="b2", retryConstraint=budget(percent=2)),
                  policy(["a"], name="b1", retryConstraint=budget(percent=1)))
    assert tie.budgets == {("app", "a"): render.Budget(1, 10000, 10, 1000)}
    assert _accepted(tie, ("app", "b2"))["reason"] == "Conflicted"


def test_target_refs_other_than_core_services_are_ignored_and_named() -> None:
    out = _render(route([rule([backend("a")])]), *_svc("a", "10.0.0.1"), policy([
        "a", {"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": "a"},
        {"group": "", "kind": "Service", "name": 'x"); os.exit(1) --'}],
        sessionPersistence={"type": "Cookie"}))
    accepted = _accepted(out)
    assert (accepted["status"], accepted["reason"]) == ("True", "Accepted")
    for words in ("spec.targetRefs[1]: only core Services are supported, not "
                  "multicluster.x-k8s.io/ServiceImport; ignored",
                  "spec.targetRefs[2].name: 'x____os.exit_1__--' is not a Service name; ignored",
                  "spec.sessionPersistence: not supported by this gateway; ignored"):
        assert words in accepted["message"]
    assert "os.exit" not in out.config


def test_a_policy_without_a_service_it_can_apply_to_says_so_where_it_is_seen() -> None:
    items = (route([rule([backend("a")])]), *_svc("a", "10.0.0.1"))
    # No core Service at all: Invalid, on the Gateways of the routes in its namespace.
    out = _render(*items, policy([{"group": "apps", "kind": "Deployment", "name": "a"}]))
    accepted = _accepted(out)
    assert (accepted["status"], accepted["reason"]) == ("False", "Invalid")
    assert "spec.targetRefs: no entry names a core Service" in accepted["message"]
    assert "spec.targetRefs[0]: only core Services are supported, not apps/Deployment" \
        in accepted["message"]
    # A Service that does not exist but a route names: TargetNotFound there.
    out = _render(route([rule([backend("a"), backend("gone")])]), *_svc("a", "10.0.0.1"),
                  policy(["gone"]))
    accepted = _accepted(out)
    assert (accepted["status"], accepted["reason"]) == ("False", "TargetNotFound")
    assert accepted["message"].startswith("spec.targetRefs[0]: Service gone not found")
    # A Service no route of ours sends to: no ancestor of ours.
    out = _render(*items, *_svc("idle", "10.0.0.9"), policy(["idle"]))
    assert out.policies == {("app", "budget"): []}
    assert out.budgets == {("app", "idle"): render.DEFAULT_BUDGET}


def test_a_policy_reports_on_every_gateway_routing_to_its_services() -> None:
    out = render.render(objects(
        gateway_class(), gateway([listener(80)]), gateway([listener(80)], name="gw2"),
        gateway([listener(80)], name="not-ours", cls="theirs"),
        route([rule([backend("a")])], name="r1"),
        route([rule([backend("a")])], name="r2", parent="gw2"),
        route([rule([backend("a")])], name="r3", parent="not-ours"),
        *_svc("a", "10.0.0.1"), policy(["a"])), OPTS)
    assert [e["ancestorRef"]["name"] for e in _ancestors(out)] == ["gw", "gw2"]


def test_names_that_reach_lua_are_dns_labels_and_paths_are_plain() -> None:
    evil = 'a") os.execute("x'
    out = _render(route([rule([backend(evil), backend("a")])]), *_svc("a", "10.0.0.1"),
                  {**service("x"), "metadata": {"name": evil, "namespace": "app"}},
                  endpoint_slice(evil, ["10.0.0.5"], 8080))
    resolved = _conds(_parent(out))["ResolvedRefs"]
    assert (resolved["status"], resolved["reason"]) == ("False", "BackendNotFound")
    assert "is not a Service name" in resolved["message"]
    assert "os.execute" not in out.config and "10.0.0.5" not in out.config
    for field in ("lua_dir", "nginx_modules_dir", "runtime_dir"):
        opts = Options(**{"runtime_dir": "/run/gw", field: '/x"; os.exit() --'})
        with pytest.raises(ValueError, match=f"Options.{field}: .* is not an absolute path"):
            _render(route([rule([backend("a")])]), *_svc("a", "10.0.0.1"), opts=opts)
    with pytest.raises(ValueError, match="cannot be a Lua string"):
        render._lua_call("balance", 'a"b')
