"""PURE: Gateway API objects -> the nginx configuration and the status they should carry.

``render(objects, options)`` takes the GatewayClasses, Gateways, HTTPRoutes, Services,
EndpointSlices, Namespaces and XBackendTrafficPolicies (plain dicts, as the API returns them)
and returns a ``Rendered``: the nginx.conf text, the status of each GatewayClass and Gateway
this controller owns (``CONTROLLER_NAME``), this controller's ``status.parents[]`` entries of
each HTTPRoute attached to one of them and its ``status.ancestors[]`` entries of each policy,
plus the numbers the controller exports as metrics. It reads no clock, file or network:
``controller`` calls it, ``stamp_conditions`` adds the ``lastTransitionTime``s.
docs/gateway.md says what of Gateway API it implements.

Two nginx masters make the data plane (``nginx.DataPlane``): the EDGE (``edge_config``)
listens on the listener ports and hands every request, keep-alive, to the ROUTING tier
(``render(...).config``) over one unix socket per port. Only the routing tier is reloaded when
routes or endpoints change; the edge retries a request whose idle connection the reload
closed (nothing reached a backend yet), so clients' keep-alive connections never see a reload.

How the routing tier routes a request (one nginx ``server`` per listener port and hostname):

- the Host header picks the server (exact, then the longest wildcard, else the port's
  default server, which holds the routes that accept any hostname);
- one ``map`` per server turns ``<header bits>:<method>:<normalised path>`` into the name of
  a rule's named location, its regexes in Gateway API's precedence order (hostname, Exact path,
  longest prefix, method, number of header matches, then the oldest route, then
  ``namespace/name``, then rule order); each header-value pair a match names is one bit (a
  ``map`` of ``$http_<name>``), so no request text is ever interpolated into configuration;
  no match -> 404;
- the rule's location picks a backend per request with ``split_clients`` on ``$request_id``
  (uniform per request, independent of the pod count behind each backend); each backend is an
  ``upstream`` of its Service's ready endpoints (pod IP:port from the EndpointSlices), HTTP/1.1
  with keep-alive and unbuffered responses (server-sent events stream). A backend without
  ready endpoints answers 503 for its share, one that does not resolve 500 (the spec's words),
  and neither share moves to the other backends;
- retries: ``proxy_next_upstream`` (to another endpoint of the same backend) on connection
  errors and timeouts, plus the rule's ``retry.codes`` (default 503) with ``non_idempotent``,
  at most ``MAX_ATTEMPTS`` retries; a rule without ``retry`` gets ``DEFAULT_RETRIES`` retry on
  connection errors only;
- retry budget: every backend upstream has a ``balancer_by_lua_block`` calling ``budget.lua``
  (shipped beside this module; Debian's lua module, ``NGINX_LUA_MODULES``, routing tier only)
  with its Service's ``Budget``: the one an XBackendTrafficPolicy gives it (the oldest policy
  on a Service wins, later ones are ``Conflicted``), else ``DEFAULT_BUDGET``. The first try
  counts a request, each retry the budget allows counts a retry (counters in a
  ``lua_shared_dict``); a refused retry goes to a local server that answers 503 with
  ``BUDGET_HEADER``. The status server answers the counters on ``BUDGET_STATUS_PATH``.

Everything that reaches the configuration is validated or generated: object names only in
sanitised comments (and, as Lua strings, Service names and namespaces that are DNS labels),
hostnames by Gateway API's pattern, paths and header values only as hex-escaped regexes,
header names limited to letters, digits and ``-``, endpoints parsed as IP addresses,
directories of ``Options`` limited to letters, digits and ``._/+-``. A rule that asks for
what this cannot do safely is left out with a condition naming the field
(``PartiallyInvalid``, or ``Accepted=False`` when no rule is left).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONTROLLER_NAME = "modelservice.dev/nginx-gateway"
"""``spec.controllerName`` of the GatewayClasses this controller implements."""
GROUP = "gateway.networking.k8s.io"
ROUTE_KIND = "HTTPRoute"

MAX_ATTEMPTS = 5
"""The most retries one request gets, whatever ``retry.attempts`` says (bounded load)."""
DEFAULT_ATTEMPTS = 2
"""Retries of a rule whose ``retry`` names no ``attempts``."""
DEFAULT_RETRIES = 1
"""Retries of a rule without ``retry``: connection errors and timeouts only."""
RETRY_CODES = {403: "http_403", 404: "http_404", 429: "http_429", 500: "http_500",
               502: "http_502", 503: "http_503", 504: "http_504"}
"""The ``retry.codes`` nginx can express (``proxy_next_upstream``)."""
DEFAULT_RETRY_CODES = (503,)
FAIL_TIMEOUT_S = 1
"""How long an endpoint that failed gets no new requests (nginx's ``fail_timeout``) unless
the rule's ``retry.backoff`` says longer; ``MAX_FAIL_TIMEOUT_S`` caps that."""
MAX_FAIL_TIMEOUT_S = 60
CONNECT_TIMEOUT = "1s"
SEND_TIMEOUT = "60s"
READ_TIMEOUT = "300s"
"""Between two reads of a response (long generations and event streams stay open)."""
RETRY_WINDOW = "30s"
"""``proxy_next_upstream_timeout``: no retry starts later than this after the first try."""
MAX_BODY = "64m"
BODY_BUFFER = "1m"
UPSTREAM_KEEPALIVE = 16
UPSTREAM_KEEPALIVE_TIMEOUT = "4s"
"""Below uvicorn's 5 s idle timeout, so nginx closes an idle connection before the server."""
WORKER_SHUTDOWN_TIMEOUT = "300s"
EDGE_READ_TIMEOUT = "660s"
"""The edge waits longer than the routing tier's read timeout plus its retries."""
EDGE_TRIES = 3
EDGE_KEEPALIVE_TIMEOUT = "60s"
EDGE_KEEPALIVE_REQUESTS = 100_000
"""Requests a client's keep-alive connection carries before the edge closes it (nginx's
default, 1,000, makes busy clients reconnect every thousand requests)."""
POLICY_GROUP = "gateway.networking.x-k8s.io"
POLICY_KIND = "XBackendTrafficPolicy"
CONFIG_DIGEST = "@MSV_CONFIG_DIGEST@"
"""Placeholder ``nginx.apply`` replaces with the config's digest: the status server's
``/msv-config`` answers it, so the controller sees when the workers serve a new config."""

_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PATH = re.compile(r"^(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")
_HEADER_VALUE = re.compile(r"^[!-~]+([\t ]?[!-~]+)*$")
_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
_DURATION_PART = re.compile(r"([0-9]{1,5})(h|ms|m|s)")
_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
_COMMENT_SAFE = re.compile(r"[^A-Za-z0-9._/:=-]")
_LISTEN_ADDRESS = re.compile(r"^([0-9.]+|\[[0-9a-fA-F:]+\])$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_CONFIG_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")


@dataclass(frozen=True)
class Budget:
    """A backend Service's retry budget (``XBackendTrafficPolicy.spec.retryConstraint``): a
    retry is allowed while the retries of the last ``interval_ms`` are below ``percent`` % of
    its requests, or while the retries of the last ``min_interval_ms`` are below
    ``min_count``. The defaults are Gateway API's."""

    percent: int = 20
    interval_ms: int = 10_000
    min_count: int = 10
    min_interval_ms: int = 1_000


DEFAULT_BUDGET = Budget()
"""Every backend's budget unless a policy targets its Service (this gateway's safe default)."""
BUDGET_DICT = "msv_retry_budget"
"""The routing tier's ``lua_shared_dict`` of the budget counters."""
BUDGET_DICT_SIZE = "4m"
BUDGET_HEADER = "x-msv-retry-budget"
BUDGET_HEADER_VALUE = "exhausted"
"""The header of the 503 a client gets when a retry was refused for the budget."""
BUDGET_BODY = "the backend failed and its retry budget is spent: not retried\\n"
"""That 503's body (an nginx string: no quote, no variable)."""
BUDGET_STATUS_PATH = "/msv-retry-budget"
"""The routing tier's status server answers the budget counters there (JSON)."""
LUA_MODULE = "budget"
LUA_DIR = str(Path(__file__).resolve().parent)
"""Where ``budget.lua`` is: beside this module (the package ships it)."""
NGINX_LUA_MODULES = ("ndk_http_module.so", "ngx_http_lua_module.so")
"""Debian's libnginx-mod-http-lua (and the NDK it needs), loaded by the routing tier."""


@dataclass(frozen=True)
class Options:
    """How the data plane runs: where nginx keeps its files and what it may listen on."""

    runtime_dir: str
    """Absolute directory for the pid file and nginx's temporary files (writable)."""
    ports: frozenset[int] = frozenset({80})
    """Listener ports the data plane serves (its Service's): the edge tier listens on them."""
    status_listen: str = "127.0.0.1:8082"
    """Loopback address of the routing tier's status server (``stub_status``,
    ``/msv-config``)."""
    edge_status_listen: str = "127.0.0.1:8083"
    """The same for the edge tier."""
    listen_address: str = ""
    """Address the edge binds its ports on ("" = every address; ``127.0.0.1`` in tests)."""
    addresses: tuple[str, ...] = ()
    """The Gateways' ``status.addresses`` (the data plane Service's clusterIP)."""
    workers: str = "auto"
    nginx_modules_dir: str = "/usr/lib/nginx/modules"
    """Where nginx's dynamic modules are (``NGINX_LUA_MODULES``; Debian's directory)."""
    lua_dir: str = LUA_DIR
    """Where the routing tier finds ``budget.lua``."""


@dataclass(frozen=True)
class Objects:
    """What the controller watches, as the API returns it."""

    gateway_classes: Sequence[Mapping[str, Any]] = ()
    gateways: Sequence[Mapping[str, Any]] = ()
    routes: Sequence[Mapping[str, Any]] = ()
    services: Sequence[Mapping[str, Any]] = ()
    endpoint_slices: Sequence[Mapping[str, Any]] = ()
    namespaces: Sequence[Mapping[str, Any]] = ()
    policies: Sequence[Mapping[str, Any]] = ()
    """XBackendTrafficPolicies (``POLICY_GROUP``)."""


Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Backend:
    """One backendRef of a rule after resolution (for status and metrics)."""

    namespace: str
    service: str
    port: int
    weight: int
    endpoints: tuple[str, ...]  # "ip:port", sorted
    error: str = ""  # why it does not resolve ("": it does)
    reason: str = ""  # ResolvedRefs reason when it does not


@dataclass
class Rendered:
    config: str
    gateway_classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """GatewayClass name -> its status (conditions without lastTransitionTime)."""
    gateways: dict[Key, dict[str, Any]] = field(default_factory=dict)
    routes: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)
    """HTTPRoute -> this controller's status.parents[] entries (every parentRef it owns)."""
    attached_routes: int = 0
    """HTTPRoutes accepted by at least one parent."""
    backends: dict[tuple[str, str, int], int] = field(default_factory=dict)
    """(namespace, Service, port) of every resolved backend -> its ready endpoints."""
    policies: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)
    """XBackendTrafficPolicy -> this controller's status.ancestors[] entries."""
    budgets: dict[Key, Budget] = field(default_factory=dict)
    """Service -> the budget a policy gives it (the others get ``DEFAULT_BUDGET``)."""


# -- small helpers ------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _key(obj: Mapping[str, Any]) -> Key:
    m = _meta(obj)
    return str(m.get("namespace") or ""), str(m.get("name") or "")


def _generation(obj: Mapping[str, Any]) -> int:
    gen = _meta(obj).get("generation")
    return gen if isinstance(gen, int) else 0


def condition(type_: str, ok: bool, reason: str, message: str, generation: int
              ) -> dict[str, Any]:
    return {"type": type_, "status": "True" if ok else "False", "reason": reason,
            "message": message[:32000], "observedGeneration": generation}


def _comment(text: str) -> str:
    """Object names as they may appear in a comment: no newline, no quote, nothing else."""
    return _COMMENT_SAFE.sub("_", text)[:200]


def _rx(text: str) -> str:
    """``text`` as a regex matching exactly it: letters and digits as they are, every other
    byte ``\\xHH`` (so nothing reaches nginx's parser or PCRE as syntax)."""
    out = []
    for b in text.encode():
        c = chr(b)
        out.append(c if c.isascii() and c.isalnum() else f"\\x{b:02x}")
    return "".join(out)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _as_map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def duration_seconds(text: str) -> float:
    """A Gateway API Duration (``1h2m3s4ms``) in seconds; ValueError if it is not one."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a Gateway API duration (e.g. 100ms, 1s, 1m30s)")
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(int(n) * unit[u] for n, u in _DURATION_PART.findall(text))


def _dns_label(name: Any) -> bool:
    """A Service name or namespace (RFC 1123 label): the only names that reach Lua code."""
    return isinstance(name, str) and bool(_DNS_LABEL.match(name))


def _config_path(path: str, what: str) -> str:
    """``path`` as it may appear in the configuration (and in Lua strings): absolute, of
    letters, digits and ``._/+-`` only; ValueError naming ``what`` otherwise."""
    if not _CONFIG_PATH.match(path):
        raise ValueError(f"{what}: {path!r} is not an absolute path of letters, digits and "
                         "._/+- only")
    return path.rstrip("/") or "/"


def valid_hostname(name: Any) -> bool:
    return isinstance(name, str) and len(name) <= 253 and bool(_HOSTNAME.match(name))


def _wild_covers(wildcard: str, host: str) -> bool:
    """``*.example.com`` covers ``a.example.com``, ``a.b.example.com``, ``*.a.example.com``."""
    suffix = wildcard[1:]
    return host.endswith(suffix) and len(host) > len(suffix)


def intersect_hostnames(listener: str | None, route: Sequence[str]) -> list[str]:
    """The hostnames a route serves on a listener ("*" = any); [] = they do not intersect."""
    if not route:
        return [listener or "*"]
    if not listener:
        return list(dict.fromkeys(route))
    out: list[str] = []
    for h in route:
        if h == listener or (listener.startswith("*.") and _wild_covers(listener, h)):
            out.append(h)
        elif h.startswith("*.") and _wild_covers(h, listener):
            out.append(listener)
    return list(dict.fromkeys(out))


def _selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    for k, v in _as_map(selector.get("matchLabels")).items():
        if labels.get(k) != v:
            return False
    for expr in _as_list(selector.get("matchExpressions")):
        expr = _as_map(expr)
        key, op, values = str(expr.get("key")), expr.get("operator"), _as_list(expr.get("values"))
        has = key in labels
        if op == "In" and not (has and labels[key] in values):
            return False
        if op == "NotIn" and has and labels[key] in values:
            return False
        if op == "Exists" and not has:
            return False
        if op == "DoesNotExist" and has:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


# -- rules ------------------------------------------------------------------------------------


class Unsupported(ValueError):
    """A rule (or route) asks for what this implementation does not do: the message names
    the field."""


@dataclass(frozen=True)
class Match:
    exact: bool
    path: str  # decoded; a prefix without its trailing "/"
    raw_path_len: int
    method: str  # "" = any
    headers: tuple[tuple[str, str], ...]  # (lowercase name, value)


@dataclass
class Rule:
    route: Key
    index: int
    matches: list[Match]
    backends: list[Backend]
    retry_on: tuple[str, ...]
    tries: int
    fail_timeout: int
    note: str = ""  # for the Accepted message (an attempts cap)


def _match(m: Mapping[str, Any], where: str) -> Match:
    path = _as_map(m.get("path")) or {"type": "PathPrefix", "value": "/"}
    ptype = path.get("type", "PathPrefix")
    value = path.get("value", "/")
    if ptype not in ("PathPrefix", "Exact"):
        raise Unsupported(f"{where}.path.type: {ptype} is not supported (PathPrefix, Exact)")
    if not isinstance(value, str) or not value.startswith("/") or len(value) > 1024 \
            or not _PATH.match(value) or "%2f" in value.lower() or "//" in value:
        raise Unsupported(f"{where}.path.value: {value!r} is not an absolute path of "
                          "Gateway API's characters")
    decoded = re.sub(r"%([0-9a-fA-F]{2})", lambda g: chr(int(g.group(1), 16)), value)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        raise Unsupported(f"{where}.path.value: a control character is not supported")
    segments = decoded.split("/")
    if "." in segments or ".." in segments:
        raise Unsupported(f"{where}.path.value: '.' and '..' segments never match (nginx "
                          "normalises the path)")
    if ptype == "PathPrefix" and decoded != "/":
        decoded = decoded.rstrip("/")
    method = m.get("method") or ""
    if method and method not in _METHODS:
        raise Unsupported(f"{where}.method: {method!r} is not an HTTP method")
    if m.get("queryParams"):
        raise Unsupported(f"{where}.queryParams: query parameter matches are not supported")
    headers: dict[str, str] = {}
    for j, h in enumerate(_as_list(m.get("headers"))):
        h = _as_map(h)
        hw = f"{where}.headers[{j}]"
        if h.get("type", "Exact") != "Exact":
            raise Unsupported(f"{hw}.type: {h.get('type')} is not supported (Exact)")
        name, hval = h.get("name"), h.get("value")
        if not isinstance(name, str) or len(name) > 256 or not _HEADER_NAME.match(name):
            raise Unsupported(f"{hw}.name: {_comment(str(name))!r} is not supported (letters, "
                              "digits and '-' only)")
        if not isinstance(hval, str) or len(hval) > 4096 or not _HEADER_VALUE.match(hval):
            raise Unsupported(f"{hw}.value: not printable US-ASCII (RFC 7230)")
        headers.setdefault(name.lower(), hval)  # the first of equivalent names counts
    return Match(ptype == "Exact", decoded, len(value), method,
                 tuple(sorted(headers.items())))


def _retry(rule: Mapping[str, Any], where: str) -> tuple[tuple[str, ...], int, int, str]:
    """(proxy_next_upstream conditions, tries, fail_timeout, note) of a rule."""
    retry = rule.get("retry")
    if retry is None:
        return ("error", "timeout", "non_idempotent"), DEFAULT_RETRIES + 1, FAIL_TIMEOUT_S, ""
    retry = _as_map(retry)
    attempts = retry.get("attempts", DEFAULT_ATTEMPTS)
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        raise Unsupported(f"{where}.retry.attempts: {attempts!r} is not a count")
    note = ""
    if attempts > MAX_ATTEMPTS:
        note = f"{where}.retry.attempts {attempts} capped at {MAX_ATTEMPTS}"
        attempts = MAX_ATTEMPTS
    codes = retry.get("codes")
    if codes is None:
        codes = list(DEFAULT_RETRY_CODES)
    names = []
    for c in _as_list(codes):
        if c not in RETRY_CODES:
            raise Unsupported(f"{where}.retry.codes: {c!r} is not supported (one of "
                              f"{', '.join(map(str, sorted(RETRY_CODES)))})")
        names.append(RETRY_CODES[c])
    fail_timeout = FAIL_TIMEOUT_S
    if retry.get("backoff") is not None:
        try:
            seconds = duration_seconds(retry["backoff"])
        except ValueError as e:
            raise Unsupported(f"{where}.retry.backoff: {e}") from None
        fail_timeout = min(MAX_FAIL_TIMEOUT_S, max(FAIL_TIMEOUT_S, math.ceil(seconds)))
    if attempts == 0:
        return ("off",), 1, fail_timeout, note
    return (("error", "timeout", *dict.fromkeys(sorted(names)), "non_idempotent"),
            attempts + 1, fail_timeout, note)


class _Endpoints:
    """Services and their ready endpoints, from Services and EndpointSlices."""

    def __init__(self, services: Iterable[Mapping[str, Any]],
                 slices: Iterable[Mapping[str, Any]]) -> None:
        self.services = {_key(s): s for s in services}
        self.slices: dict[Key, list[Mapping[str, Any]]] = {}
        for sl in slices:
            ns = _key(sl)[0]
            svc = _as_map(_meta(sl).get("labels")).get("kubernetes.io/service-name")
            if svc:
                self.slices.setdefault((ns, str(svc)), []).append(sl)

    def resolve(self, ns: str, name: str, port: int) -> tuple[tuple[str, ...], str]:
        """(sorted "ip:port" of ready endpoints, "") or ((), why it does not resolve)."""
        svc = self.services.get((ns, name))
        if svc is None:
            return (), f"Service {ns}/{name} not found"
        ports = [_as_map(p) for p in _as_list(_as_map(svc.get("spec")).get("ports"))]
        sp = next((p for p in ports if p.get("port") == port), None)
        if sp is None:
            have = ", ".join(str(p.get("port")) for p in ports) or "none"
            return (), f"Service {ns}/{name} has no port {port} (ports: {have})"
        port_name = sp.get("name") or ""
        found: set[str] = set()
        for sl in self.slices.get((ns, name), []):
            family = sl.get("addressType")
            if family not in ("IPv4", "IPv6"):
                continue
            target = next((p.get("port") for p in map(_as_map, _as_list(sl.get("ports")))
                           if (p.get("name") or "") == port_name
                           and p.get("protocol", "TCP") == "TCP"), None)
            if not isinstance(target, int) or not 0 < target < 65536:
                continue
            for ep in map(_as_map, _as_list(sl.get("endpoints"))):
                if _as_map(ep.get("conditions")).get("ready") is False:
                    continue
                for addr in _as_list(ep.get("addresses")):
                    try:
                        ip = ipaddress.ip_address(addr)
                    except ValueError:
                        continue
                    found.add(f"[{ip}]:{target}" if ip.version == 6 else f"{ip}:{target}")
        return tuple(sorted(found)), ""


def _rule(route: Mapping[str, Any], i: int, raw: Mapping[str, Any],
          endpoints: _Endpoints) -> Rule:
    ns, _name = _key(route)
    where = f"spec.rules[{i}]"
    for unsupported in ("filters", "timeouts", "sessionPersistence"):
        if raw.get(unsupported):
            raise Unsupported(f"{where}.{unsupported}: not supported by this gateway")
    matches = [_match(_as_map(m), f"{where}.matches[{j}]")
               for j, m in enumerate(_as_list(raw.get("matches")))] or [_match({}, where)]
    retry_on, tries, fail_timeout, note = _retry(raw, where)
    backends = []
    for j, ref in enumerate(_as_list(raw.get("backendRefs"))):
        ref = _as_map(ref)
        bw = f"{where}.backendRefs[{j}]"
        if ref.get("filters"):
            raise Unsupported(f"{bw}.filters: not supported by this gateway")
        weight = ref.get("weight", 1)
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 1000000:
            raise Unsupported(f"{bw}.weight: {weight!r} is not 0..1000000")
        bns = str(ref.get("namespace") or ns)
        bname, port = str(ref.get("name") or ""), ref.get("port")
        error, reason = "", ""
        if (ref.get("group") or "") != "" or (ref.get("kind") or "Service") != "Service":
            error = (f"{bw}: only core Services are supported, not "
                     f"{ref.get('group') or 'core'}/{ref.get('kind')}")
            reason = "InvalidKind"
        elif bns != ns:
            error = (f"{bw}: a Service in another namespace ({bns}) needs a ReferenceGrant, "
                     "which this gateway does not support")
            reason = "RefNotPermitted"
        elif not isinstance(port, int) or not 0 < port < 65536:
            error, reason = f"{bw}.port: a Service backend needs its port", "UnsupportedValue"
        elif not (_dns_label(bname) and _dns_label(bns)):
            error = f"{bw}.name: {bname!r} in namespace {bns!r} is not a Service name"
            reason = "BackendNotFound"
        eps: tuple[str, ...] = ()
        if not error and isinstance(port, int):
            eps, why = endpoints.resolve(bns, bname, port)
            if why:
                error, reason = f"{bw}: {why}", "BackendNotFound"
        backends.append(Backend(bns, bname, port if isinstance(port, int) else 0, weight,
                                eps, error, reason))
    return Rule(_key(route), i, matches, backends, retry_on, tries, fail_timeout, note)


def split(weights: Sequence[int]) -> list[int]:
    """Each weight's share in hundredths of a percent (what ``split_clients`` can express),
    summing to 10000: cumulative rounding, so no share drifts by more than 0.01 %."""
    total = sum(weights)
    if total <= 0:
        return [0 for _ in weights]
    out, acc, prev = [], 0, 0
    for w in weights:
        acc += w
        edge = round(10000 * acc / total)
        out.append(edge - prev)
        prev = edge
    return out


# -- gateways and listeners ------------------------------------------------------------------


@dataclass
class _Listener:
    gateway: Key
    name: str
    port: int
    hostname: str | None
    namespaces: Mapping[str, Any]
    kinds_ok: bool
    conditions: list[dict[str, Any]]
    valid: bool
    attached: int = 0


def _listeners(gw: Mapping[str, Any], options: Options) -> list[_Listener]:
    gen = _generation(gw)
    out: list[_Listener] = []
    seen: dict[tuple[int, str | None], list[_Listener]] = {}
    for raw in map(_as_map, _as_list(_as_map(gw.get("spec")).get("listeners"))):
        name = str(raw.get("name") or "")
        port, proto, host = raw.get("port"), raw.get("protocol"), raw.get("hostname")
        allowed = _as_map(raw.get("allowedRoutes"))
        kinds = [_as_map(k) for k in _as_list(allowed.get("kinds"))]
        kinds_ok = not kinds or any((k.get("group") or GROUP) == GROUP
                                    and k.get("kind") == ROUTE_KIND for k in kinds)
        bad_kinds = [k for k in kinds if not ((k.get("group") or GROUP) == GROUP
                                              and k.get("kind") == ROUTE_KIND)]
        problem, reason = "", ""
        if proto != "HTTP":
            problem, reason = f"protocol {_comment(str(proto))} is not supported (HTTP only)", \
                "UnsupportedProtocol"
        elif not isinstance(port, int) or not 0 < port < 65536:
            problem, reason = "port must be 1..65535", "PortUnavailable"
        elif port not in options.ports:
            problem, reason = (f"port {port} is not served by this data plane (ports: "
                               f"{', '.join(map(str, sorted(options.ports))) or 'none'})",
                               "PortUnavailable")
        elif host is not None and (not valid_hostname(host)):
            problem, reason = f"hostname {_comment(str(host))!r} is not valid", "Invalid"
        ok = not problem
        conds = [
            condition("Accepted", ok, "Accepted" if ok else reason,
                      "listener accepted" if ok else problem, gen),
            condition("ResolvedRefs", not bad_kinds, "ResolvedRefs" if not bad_kinds
                      else "InvalidRouteKinds",
                      "references resolved" if not bad_kinds else
                      "only HTTPRoute is supported, not "
                      + ", ".join(_comment(str(k.get("kind"))) for k in bad_kinds), gen),
            condition("Conflicted", False, "NoConflicts", "no conflicts", gen),
            condition("Programmed", ok, "Programmed" if ok else "Invalid",
                      "listener programmed" if ok else problem, gen),
        ]
        lis = _Listener(_key(gw), name, port if isinstance(port, int) else 0,
                        host if isinstance(host, str) else None,
                        _as_map(allowed.get("namespaces")), kinds_ok, conds, ok)
        out.append(lis)
        if ok:
            seen.setdefault((lis.port, lis.hostname), []).append(lis)
    for same in seen.values():
        if len(same) > 1:  # the same port and hostname twice in one Gateway
            for lis in same:
                lis.valid = False
                lis.conditions[2] = condition("Conflicted", True, "HostnameConflict",
                                              f"another listener has port {lis.port} and "
                                              "the same hostname", gen)
                lis.conditions[3] = condition("Programmed", False, "Invalid",
                                              "conflicts with another listener", gen)
    return out


def _allows(lis: _Listener, route_ns: str, ns_labels: Mapping[str, Mapping[str, str]]) -> bool:
    if not lis.kinds_ok:
        return False
    frm = lis.namespaces.get("from", "Same")
    if frm == "All":
        return True
    if frm == "Same":
        return route_ns == lis.gateway[0]
    if frm == "Selector":
        return _selector_matches(_as_map(lis.namespaces.get("selector")),
                                 ns_labels.get(route_ns, {}))
    return False


# -- retry budgets (XBackendTrafficPolicy) -----------------------------------------------------

MAX_BUDGET_INTERVAL_MS = 3_600_000
"""The longest interval of a budget or its floor (the API's: 1h)."""
MAX_ANCESTORS = 16
"""The most ``status.ancestors`` entries a policy holds (the API's)."""
_UNTARGETABLE = ("InvalidKind", "RefNotPermitted")


def _duration_text(ms: int) -> str:
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def describe(budget: Budget) -> str:
    """A budget as the conditions and docs say it."""
    return (f"{budget.percent}% of requests per {_duration_text(budget.interval_ms)}, at least "
            f"{budget.min_count} per {_duration_text(budget.min_interval_ms)}")


def _count(value: Any, where: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise Unsupported(f"{where}: {value!r} is not {low}..{high}")
    return value


def _interval_ms(value: Any, default_ms: int, where: str, low_ms: int) -> int:
    if value is None:
        return default_ms
    try:
        ms = round(duration_seconds(value) * 1000)
    except ValueError as e:
        raise Unsupported(f"{where}: {e}") from None
    if not low_ms <= ms <= MAX_BUDGET_INTERVAL_MS:
        raise Unsupported(f"{where}: {value} is not {_duration_text(low_ms)}..1h")
    return ms


def _budget(spec: Mapping[str, Any]) -> Budget:
    """The budget a policy's ``spec.retryConstraint`` asks for (Gateway API's defaults for what
    it leaves out, all of them without one); Unsupported naming the field out of range."""
    where = "spec.retryConstraint"
    rc = spec.get("retryConstraint")
    if rc is None:
        return DEFAULT_BUDGET
    if not isinstance(rc, Mapping):
        raise Unsupported(f"{where}: not an object")
    budget, floor = _as_map(rc.get("budget")), _as_map(rc.get("minRetryRate"))
    d = DEFAULT_BUDGET
    return Budget(
        _count(budget.get("percent", d.percent), f"{where}.budget.percent", 0, 100),
        _interval_ms(budget.get("interval"), d.interval_ms, f"{where}.budget.interval", 1000),
        _count(floor.get("count", d.min_count), f"{where}.minRetryRate.count", 1, 1_000_000),
        _interval_ms(floor.get("interval"), d.min_interval_ms,
                     f"{where}.minRetryRate.interval", 1))


def _policies(policies: Iterable[Mapping[str, Any]], services: Mapping[Key, Any],
              service_gateways: Mapping[Key, set[Key]], ns_gateways: Mapping[str, set[Key]],
              out: Rendered, controller_name: str) -> None:
    """Each policy's budget and status into ``out`` (``budgets``, ``policies``).

    A policy applies to the core Services its ``targetRefs`` name (other refs are ignored and
    said so); two policies on one Service: the older (creationTimestamp, then namespace/name)
    wins, the other is ``Conflicted`` there. Its ancestors are the Gateways whose attached
    routes reference a targeted Service (a policy without a valid target: the Gateways of the
    routes in its namespace, so its ``Invalid`` is seen)."""
    def age(p: Mapping[str, Any]) -> tuple[str, Key]:
        return str(_meta(p).get("creationTimestamp") or ""), _key(p)

    owner: dict[Key, Key] = {}  # Service -> the policy whose budget it has
    for pol in sorted(policies, key=age):
        key, gen = _key(pol), _generation(pol)
        ns, spec = key[0], _as_map(pol.get("spec"))
        notes: list[str] = []
        targets: list[tuple[int, str]] = []
        for i, ref in enumerate(map(_as_map, _as_list(spec.get("targetRefs")))):
            where = f"spec.targetRefs[{i}]"
            group, kind, name = ref.get("group") or "", ref.get("kind"), ref.get("name")
            if group != "" or kind != "Service":
                notes.append(f"{where}: only core Services are supported, not "
                             f"{_comment(str(group or 'core'))}/{_comment(str(kind))}; ignored")
            elif not _dns_label(name):
                notes.append(f"{where}.name: {_comment(str(name))!r} is not a Service name; "
                             "ignored")
            else:
                targets.append((i, str(name)))
        if spec.get("sessionPersistence"):
            notes.append("spec.sessionPersistence: not supported by this gateway; ignored")
        invalid, budget = "", DEFAULT_BUDGET
        try:
            budget = _budget(spec)
        except Unsupported as e:
            invalid = str(e)
        if not targets and not invalid:
            invalid = "spec.targetRefs: no entry names a core Service"
        won: list[str] = []
        conflicts: list[str] = []
        missing: list[str] = []
        if not invalid:
            for i, name in targets:
                winner = owner.setdefault((ns, name), key)
                if winner != key:
                    conflicts.append(f"spec.targetRefs[{i}]: Service {name} has the budget of "
                                     f"the older {POLICY_KIND} {winner[0]}/{winner[1]}")
                    continue
                out.budgets[(ns, name)] = budget
                won.append(name)
                if (ns, name) not in services:
                    missing.append(f"spec.targetRefs[{i}]: Service {name} not found")
        if invalid:
            ok, reason, message = False, "Invalid", invalid
        elif not won:
            ok, reason, message = False, "Conflicted", "; ".join(conflicts)
        elif len(missing) == len(won):
            ok, reason, message = False, "TargetNotFound", "; ".join(missing)
        else:
            ok, reason = True, "Accepted"
            message = f"retry budget {describe(budget)} for Service {', '.join(won)}"
            notes = conflicts + missing + notes
        message = "; ".join([message, *notes])
        gateways: set[Key] = set()
        for _i, name in targets:
            gateways |= service_gateways.get((ns, name), set())
        if not targets:
            gateways = set(ns_gateways.get(ns, set()))
        out.policies[key] = [{
            "ancestorRef": {"group": GROUP, "kind": "Gateway", "namespace": g[0], "name": g[1]},
            "controllerName": controller_name,
            "conditions": [condition("Accepted", ok, reason, message, gen)],
        } for g in sorted(gateways)[:MAX_ANCESTORS]]


# -- the configuration text -------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry:
    """One match of one rule, attached to a port under a hostname ("*" = any)."""

    port: int
    host: str
    rule: int  # index into the rules list
    match: Match
    created: str
    route: Key
    rule_index: int
    match_index: int

    def order(self) -> tuple[Any, ...]:
        wild = self.host.startswith("*")
        return (-(0 if wild else len(self.host)), -(len(self.host) if self.host != "*" else 0),
                not self.match.exact, -self.match.raw_path_len, not self.match.method,
                -len(self.match.headers), self.created, self.route, self.rule_index,
                self.match_index)


def _path_rx(m: Match) -> str:
    if m.exact:
        return _rx(m.path) + r"\z"
    if m.path == "/":
        return r"\x2f.*\z"
    return _rx(m.path) + r"(\x2f.*)?\z"


def _head(emit: Any, options: Options, name: str, headers: Sequence[str],
          modules: Sequence[str] = ()) -> None:
    """The main context (``modules`` loaded first) and the http block's common settings of
    the ``name`` tier."""
    rd = options.runtime_dir.rstrip("/")
    emit(f"# Generated by localcluster.gateway.render ({name} tier): do not edit.")
    for module in modules:
        emit(f"load_module {module};")
    emit("daemon off;")
    emit(f"worker_processes {options.workers};")
    emit(f"pid {rd}/{name}.pid;")
    emit("error_log stderr notice;")
    emit(f"worker_shutdown_timeout {WORKER_SHUTDOWN_TIMEOUT};")
    emit("events { worker_connections 4096; }")
    emit("http {")
    for tmp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        emit(f"{tmp}_temp_path {rd}/{name}-{tmp};", 1)
    for line in (
        "access_log off;", "server_tokens off;", "default_type application/octet-stream;",
        f"client_max_body_size {MAX_BODY};", f"client_body_buffer_size {BODY_BUFFER};",
        "proxy_http_version 1.1;", 'proxy_set_header Connection "";', *headers,
        "proxy_buffering off;", "proxy_request_buffering on;",
    ):
        emit(line, 1)


def _status_server(emit: Any, listen: str, locations: Sequence[str] = ()) -> None:
    """nginx's own status server, on loopback: stub_status, the config digest and
    ``locations``."""
    emit("server {", 1)
    emit(f"listen {listen};", 2)
    emit("location = /stub_status { stub_status; }", 2)
    emit(f'location = /msv-config {{ return 200 "{CONFIG_DIGEST}"; }}', 2)
    for location in locations:
        emit(location, 2)
    emit("location / { return 404; }", 2)
    emit("}", 1)


def socket_path(options: Options, port: int) -> str:
    """The unix socket the routing tier serves listener ``port`` on (the edge proxies to it)."""
    return f"{options.runtime_dir.rstrip('/')}/listener-{port}.sock"


def budget_socket_path(options: Options) -> str:
    """The routing tier's unix socket that answers a retry its budget refused (503)."""
    return f"{options.runtime_dir.rstrip('/')}/retry-budget.sock"


def _lua_call(function: str, *args: str | int) -> str:
    """``require("budget").function(args)``: strings only of letters, digits and ``._/+-``
    (names that are DNS labels, checked paths), so nothing reaches Lua as syntax."""
    parts = []
    for a in args:
        if isinstance(a, str):
            if not re.fullmatch(r"[A-Za-z0-9._/+-]*", a):
                raise ValueError(f"{a!r} cannot be a Lua string here")
            parts.append(f'"{a}"')
        else:
            parts.append(str(int(a)))
    return f'require("{LUA_MODULE}").{function}({", ".join(parts)})'


def _budget_blocks(emit: Any, options: Options) -> None:
    """The routing tier's http-level budget settings: the Lua module, its counters, the
    server that answers a refused retry."""
    lua_dir = _config_path(options.lua_dir, "Options.lua_dir")
    sock = _config_path(budget_socket_path(options), "Options.runtime_dir")
    emit(f'lua_package_path "{lua_dir}/?.lua;;";', 1)
    emit(f"lua_shared_dict {BUDGET_DICT} {BUDGET_DICT_SIZE};", 1)
    emit(f"init_by_lua_block {{ {_lua_call('init', BUDGET_DICT, sock)} }}", 1)
    emit("server {  # a retry the backend's budget refused", 1)
    emit(f"listen unix:{sock};", 2)
    emit("default_type text/plain;", 2)
    emit(f"location / {{ add_header {BUDGET_HEADER} {BUDGET_HEADER_VALUE} always; "
         f'return 503 "{BUDGET_BODY}"; }}', 2)
    emit("}", 1)


def edge_config(options: Options) -> str:
    """The edge tier: listens on every port of ``options.ports`` and hands each request to the
    routing tier over a unix socket, keep-alive. It never changes while the data plane runs,
    so clients' keep-alive connections survive the routing tier's reloads: a reload closes
    the edge's idle connections to the old workers, and nginx retries a request whose cached
    connection failed before any response on a new one (non_idempotent: nothing reached a
    backend)."""
    lines: list[str] = []

    def emit(text: str = "", depth: int = 0) -> None:
        lines.append("    " * depth + text if text else "")

    # Host: the host the request names (request line or Host header, without the port); an
    # HTTP/1.0 request without one says "localhost" (the routing tier needs one).
    _head(emit, options, "edge", (
        "proxy_set_header Host $msv_host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;"))
    emit('map $host $msv_host { "" localhost; default $host; }', 1)
    for line in (f"keepalive_requests {EDGE_KEEPALIVE_REQUESTS};",
                 f"proxy_connect_timeout {CONNECT_TIMEOUT};",
                 f"proxy_send_timeout {SEND_TIMEOUT};", f"proxy_read_timeout {EDGE_READ_TIMEOUT};",
                 "proxy_next_upstream error non_idempotent;",
                 f"proxy_next_upstream_tries {EDGE_TRIES};"):
        emit(line, 1)
    listen = _listen_prefix(options)
    for port in sorted(options.ports):
        emit(f"upstream msv_listener_{port} {{", 1)
        emit(f"server unix:{socket_path(options, port)};", 2)
        emit("keepalive 64;", 2)
        emit(f"keepalive_timeout {EDGE_KEEPALIVE_TIMEOUT};", 2)
        emit("}", 1)
        emit("server {", 1)
        emit(f"listen {listen}{port} default_server;", 2)
        emit(f"location / {{ proxy_pass http://msv_listener_{port}; }}", 2)
        emit("}", 1)
    _status_server(emit, options.edge_status_listen)
    emit("}")
    return "\n".join(lines) + "\n"


def _listen_prefix(options: Options) -> str:
    listen = options.listen_address
    if listen and not _LISTEN_ADDRESS.match(listen):
        raise ValueError(f"listen address {listen!r} is not an IP address")
    return f"{listen}:" if listen else ""


def _config(options: Options, rules: list[Rule], entries: list[_Entry],
            budgets: Mapping[Key, Budget]) -> str:
    """The routing tier (see the module docstring)."""
    lines: list[str] = []

    def emit(text: str = "", depth: int = 0) -> None:
        lines.append("    " * depth + text if text else "")

    modules_dir = _config_path(options.nginx_modules_dir, "Options.nginx_modules_dir")
    _head(emit, options, "routing", (
        "proxy_set_header Host $http_host;",
        # The edge set them from the client's connection.
        "proxy_set_header X-Forwarded-For $http_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $http_x_forwarded_proto;"),
        modules=[f"{modules_dir}/{m}" for m in NGINX_LUA_MODULES])
    for line in (
        "server_names_hash_bucket_size 256;", "server_names_hash_max_size 4096;",
        "map_hash_bucket_size 128;", "variables_hash_bucket_size 128;",
        f"proxy_connect_timeout {CONNECT_TIMEOUT};", f"proxy_send_timeout {SEND_TIMEOUT};",
        f"proxy_read_timeout {READ_TIMEOUT};", f"proxy_next_upstream_timeout {RETRY_WINDOW};",
    ):
        emit(line, 1)
    _budget_blocks(emit, options)

    # One bit per (header, value) pair some match names.
    bits: dict[tuple[str, str], int] = {}
    for e in entries:
        for h in e.match.headers:
            bits.setdefault(h, len(bits))
    for (name, value), b in sorted(bits.items(), key=lambda kv: kv[1]):
        var = "$http_" + name.replace("-", "_")
        emit(f'map {var} $msv_h{b} {{ "~^{_rx(value)}\\z" 1; default 0; }}', 1)
    bit_vars = "".join(f"$msv_h{b}" for b in range(len(bits)))

    # Backends: one split per rule, one upstream per (rule, backend) with endpoints.
    for r, rule in enumerate(rules):
        emit(f"# rule {r}: HTTPRoute {_comment('/'.join(rule.route))} rules[{rule.index}]", 1)
        targets: list[str] = []
        for b, be in enumerate(rule.backends):
            if be.error:
                targets.append("500")
            elif not be.endpoints:
                targets.append("503")
            else:
                targets.append(f"msv_u{r}_{b}")
                emit(f"upstream msv_u{r}_{b} {{  # {_comment(f'{be.namespace}/{be.service}')}"
                     f":{be.port}", 1)
                for ep in be.endpoints:
                    emit(f"server {ep} max_fails=1 fail_timeout={rule.fail_timeout}s;", 2)
                # Before keepalive, which wraps the balancer; nginx's round robin picks the
                # endpoint of every try the budget allows.
                bud = budgets.get((be.namespace, be.service), DEFAULT_BUDGET)
                emit("balancer_by_lua_block { " + _lua_call(
                    "balance", f"{be.namespace}/{be.service}", bud.percent, bud.interval_ms,
                    bud.min_count, bud.min_interval_ms) + " }", 2)
                emit(f"keepalive {UPSTREAM_KEEPALIVE};", 2)
                emit(f"keepalive_timeout {UPSTREAM_KEEPALIVE_TIMEOUT};", 2)
                emit("}", 1)
        shares = split([be.weight for be in rule.backends])
        parts = [(s, t) for s, t in zip(shares, targets, strict=True) if s > 0]
        if parts:
            emit(f'split_clients "$request_id" $msv_b{r} {{', 1)
            for k, (share, target) in enumerate(parts):
                pct = "*" if k == len(parts) - 1 else f"{share // 100}.{share % 100:02d}%"
                emit(f"{pct} {target};", 2)
            emit("}", 1)

    # Servers: per port, one per hostname and a default one.
    by_port: dict[int, list[_Entry]] = {}
    for e in entries:
        by_port.setdefault(e.port, []).append(e)
    s = 0
    for port in sorted(options.ports):  # each port's socket answers, 404 without routes
        port_entries = by_port.get(port, [])
        hosts = sorted({e.host for e in port_entries if e.host != "*"})
        for host in ["*", *hosts]:
            mine = [e for e in port_entries
                    if e.host == host or e.host == "*"
                    or (e.host.startswith("*.") and host != "*" and _wild_covers(e.host, host))]
            mine.sort(key=_Entry.order)
            # A match reached through two listeners or hostnames: once, where it ranks highest.
            first: dict[tuple[int, int], _Entry] = {}
            for e in mine:
                first.setdefault((e.rule, e.match_index), e)
            mine = list(first.values())
            emit(f'map "{bit_vars}:$request_method:$uri" $msv_s{s} {{', 1)
            for e in mine:
                m = e.match
                bit_rx = "".join(
                    "1" if (name, value) in m.headers else "." for (name, value), _ in
                    sorted(bits.items(), key=lambda kv: kv[1]))
                method_rx = m.method or "[A-Z_-]+"
                emit(f'"~(?s)^{bit_rx}:{method_rx}:{_path_rx(m)}" msv_r{e.rule};  '
                     f"# {_comment('/'.join(e.route))} rules[{e.rule_index}]"
                     f".matches[{e.match_index}]", 2)
            emit("default msv_nomatch;", 2)
            emit("}", 1)
            emit("server {", 1)
            where = f"unix:{socket_path(options, port)}"
            emit(f"listen {where}{' default_server' if host == '*' else ''};", 2)
            emit(f"server_name {'_' if host == '*' else host};", 2)
            emit(f"location / {{ error_page 418 = @$msv_s{s}; return 418; }}", 2)
            emit("location @msv_nomatch { return 404; }", 2)
            for r in sorted({e.rule for e in mine}):
                _rule_location(emit, r, rules[r])
            emit("}", 1)
            s += 1

    _status_server(emit, options.status_listen, (
        f"location = {BUDGET_STATUS_PATH} {{ default_type application/json; "
        f"content_by_lua_block {{ {_lua_call('report')} }} }}",))
    emit("}")
    return "\n".join(lines) + "\n"


def _rule_location(emit: Any, r: int, rule: Rule) -> None:
    shares = split([be.weight for be in rule.backends])
    live = [be for be, share in zip(rule.backends, shares, strict=True) if share > 0]
    emit(f"location @msv_r{r} {{", 2)
    codes = sorted({"500" if be.error else "503" for be in live
                    if be.error or not be.endpoints})
    if not live:
        emit("return 500;", 3)  # no backend with a weight: the spec's 500
    elif len(codes) == 1 and all(be.error or not be.endpoints for be in live):
        emit(f"return {codes[0]};", 3)  # every share answers the same error
    else:
        for code in codes:
            emit(f'if ($msv_b{r} = "{code}") {{ return {code}; }}', 3)
        if any(not be.error and be.endpoints for be in live):
            emit(f"proxy_pass http://$msv_b{r}$request_uri;", 3)
            emit(f"proxy_next_upstream {' '.join(rule.retry_on)};", 3)
            emit(f"proxy_next_upstream_tries {rule.tries};", 3)
        else:
            emit("return 503;", 3)
    emit("}", 2)


# -- render -----------------------------------------------------------------------------------


def render(objects: Objects, options: Options, controller_name: str = CONTROLLER_NAME
           ) -> Rendered:
    """The nginx configuration and statuses for ``objects`` (see the module docstring)."""
    out = Rendered(config="")
    classes: dict[str, bool] = {}  # our GatewayClasses -> accepted
    for gc in _sorted(objects.gateway_classes):
        spec = _as_map(gc.get("spec"))
        if spec.get("controllerName") != controller_name:
            continue
        name, gen = _key(gc)[1], _generation(gc)
        ok = not spec.get("parametersRef")
        classes[name] = ok
        out.gateway_classes[name] = {"conditions": [condition(
            "Accepted", ok, "Accepted" if ok else "InvalidParameters",
            "accepted by " + controller_name if ok
            else "spec.parametersRef: this controller takes no parameters", gen)]}

    ns_labels = {_key(n)[1]: {str(k): str(v) for k, v in
                              _as_map(_meta(n).get("labels")).items()}
                 for n in objects.namespaces}
    gateways: dict[Key, list[_Listener]] = {}
    for gw in _sorted(objects.gateways):
        cls = _as_map(gw.get("spec")).get("gatewayClassName")
        if cls not in classes:
            continue
        key, gen = _key(gw), _generation(gw)
        listeners = _listeners(gw, options) if classes[cls] else []
        gateways[key] = listeners
        valid = [lis for lis in listeners if lis.valid]
        wanted = [_as_map(a).get("value") for a in
                  _as_list(_as_map(gw.get("spec")).get("addresses"))]
        bad_address = [a for a in wanted if a not in options.addresses]
        if not classes[cls]:
            accepted = condition("Accepted", False, "InvalidParameters",
                                 f"GatewayClass {cls} is not accepted", gen)
        elif bad_address:
            accepted = condition("Accepted", False, "UnsupportedAddress",
                                 "spec.addresses: this data plane has only "
                                 + (", ".join(options.addresses) or "no fixed address"), gen)
        elif not valid:
            accepted = condition("Accepted", False, "ListenersNotValid",
                                 "no listener is valid", gen)
        elif len(valid) < len(listeners):
            accepted = condition("Accepted", True, "ListenersNotValid",
                                 "some listeners are not valid: "
                                 + ", ".join(_comment(lis.name) for lis in listeners
                                             if not lis.valid), gen)
        else:
            accepted = condition("Accepted", True, "Accepted", "accepted", gen)
        programmed = accepted["status"] == "True"
        if bad_address or not classes[cls]:
            gateways[key] = []  # routes attach nowhere on a Gateway that is not accepted
        out.gateways[key] = {
            "addresses": [{"type": "IPAddress", "value": a} for a in options.addresses],
            "conditions": [accepted, condition(
                "Programmed", programmed, "Programmed" if programmed else "Invalid",
                "configuration loaded" if programmed else accepted["message"], gen)],
            "listeners": [],  # filled below, once attachedRoutes are counted
        }

    endpoints = _Endpoints(objects.services, objects.endpoint_slices)
    rules: list[Rule] = []
    entries: list[_Entry] = []
    service_gateways: dict[Key, set[Key]] = {}  # Service -> Gateways routing to it
    ns_gateways: dict[str, set[Key]] = {}  # namespace -> Gateways its routes attach to
    for route in _sorted(objects.routes):
        key, gen = _key(route), _generation(route)
        spec = _as_map(route.get("spec"))
        parents = []
        for ref in map(_as_map, _as_list(spec.get("parentRefs"))):
            if (ref.get("group") or GROUP) != GROUP or (ref.get("kind") or "Gateway") != "Gateway":
                continue
            gkey = (str(ref.get("namespace") or key[0]), str(ref.get("name") or ""))
            if gkey in gateways:
                parents.append((ref, gkey))
        if not parents:
            continue
        # The rules, once per route (every parent shares them).
        compiled: list[Rule] = []
        problems: list[str] = []
        notes: list[str] = []
        for i, raw in enumerate(_as_list(spec.get("rules"))):
            try:
                rule = _rule(route, i, _as_map(raw), endpoints)
            except Unsupported as e:
                problems.append(str(e))
                continue
            compiled.append(rule)
            if rule.note:
                notes.append(rule.note)
        hostnames = [h for h in _as_list(spec.get("hostnames"))]
        bad_hosts = [h for h in hostnames if not valid_hostname(h)]
        unresolved = [be for rule in compiled for be in rule.backends if be.error]
        empty = [f"spec.rules[{rule.index}].backendRefs: Service {be.namespace}/{be.service}:"
                 f"{be.port} has no ready endpoints; its share answers 503"
                 for rule in compiled for be in rule.backends
                 if not be.error and not be.endpoints and be.weight > 0]
        statuses: list[dict[str, Any]] = []
        attached_any = False
        accepted_by: set[Key] = set()
        first_rule = len(rules)
        for ref, gkey in parents:
            section, port = ref.get("sectionName"), ref.get("port")
            candidates = [lis for lis in gateways[gkey] if lis.valid
                          and (section is None or lis.name == section)
                          and (port is None or lis.port == port)]
            reason, message, attached = "", "", []
            if bad_hosts:
                reason = "UnsupportedValue"
                message = "spec.hostnames: not valid: " + ", ".join(
                    _comment(str(h)) for h in bad_hosts)
            elif not candidates:
                reason = "NoMatchingParent"
                message = (f"Gateway {gkey[0]}/{gkey[1]} has no valid listener"
                           + (f" named {_comment(str(section))}" if section is not None else "")
                           + (f" on port {port}" if port is not None else ""))
            else:
                allowed = [lis for lis in candidates if _allows(lis, key[0], ns_labels)]
                if not allowed:
                    reason = "NotAllowedByListeners"
                    message = "no listener allows HTTPRoutes from namespace " + key[0]
                else:
                    for lis in allowed:
                        hosts = intersect_hostnames(lis.hostname, hostnames)
                        if hosts:
                            attached.append((lis, hosts))
                    if not attached:
                        reason = "NoMatchingListenerHostname"
                        message = "spec.hostnames intersect no listener's hostname"
            if not reason and not compiled:
                reason, message = "UnsupportedValue", "; ".join(problems)
            conds: list[dict[str, Any]] = []
            if reason:
                conds.append(condition("Accepted", False, reason, message, gen))
            else:
                attached_any = True
                accepted_by.add(gkey)
                msg = "accepted" + (f" ({'; '.join(notes)})" if notes else "")
                conds.append(condition("Accepted", True, "Accepted", msg, gen))
                for lis, hosts in attached:
                    lis.attached += 1
                    for host in hosts:
                        for r, rule in enumerate(compiled):
                            for j, m in enumerate(rule.matches):
                                entries.append(_Entry(
                                    lis.port, host, first_rule + r, m,
                                    str(_meta(route).get("creationTimestamp") or ""),
                                    key, rule.index, j))
            if problems and compiled:
                conds.append(condition("PartiallyInvalid", True, "UnsupportedValue",
                                       "rules left out: " + "; ".join(problems), gen))
            if unresolved:
                conds.append(condition("ResolvedRefs", False, unresolved[0].reason,
                                       "; ".join([be.error for be in unresolved] + empty)
                                       + " (a backend that does not resolve answers 500 for "
                                       "its share)", gen))
            else:
                conds.append(condition("ResolvedRefs", True, "ResolvedRefs",
                                       "; ".join(empty) or "all backends resolved", gen))
            statuses.append({"parentRef": dict(ref), "controllerName": controller_name,
                             "conditions": conds})
        out.routes[key] = statuses
        if attached_any:
            rules.extend(compiled)
            out.attached_routes += 1
            ns_gateways.setdefault(key[0], set()).update(accepted_by)
            for rule in compiled:
                for be in rule.backends:
                    if not be.error:
                        out.backends[(be.namespace, be.service, be.port)] = len(be.endpoints)
                    if be.reason not in _UNTARGETABLE:
                        service_gateways.setdefault((be.namespace, be.service), set()).update(
                            accepted_by)

    for key, listeners in gateways.items():
        out.gateways[key]["listeners"] = [{
            "name": lis.name,
            "supportedKinds": [{"group": GROUP, "kind": ROUTE_KIND}] if lis.kinds_ok else [],
            "attachedRoutes": lis.attached, "conditions": lis.conditions,
        } for lis in listeners]
    _policies(objects.policies, endpoints.services, service_gateways, ns_gateways, out,
              controller_name)
    out.config = _config(options, rules, entries, out.budgets)
    return out


def _sorted(objs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Objects in a stable order (namespace/name), so the same state renders the same text."""
    return sorted(objs, key=_key)


def programmed_false(status: Mapping[str, Any], message: str) -> dict[str, Any]:
    """A Gateway's rendered status with ``Programmed=False`` (nginx refused the config)."""
    out = dict(status)
    conds = [dict(c) for c in _as_list(status.get("conditions"))]
    for c in conds:
        if c.get("type") == "Programmed":
            c.update(status="False", reason="Invalid",
                     message=("nginx refused the configuration (the previous one keeps "
                              f"serving): {message}")[:32000])
    out["conditions"] = conds
    out["listeners"] = [
        {**lis, "conditions": [
            {**c, "status": "False", "reason": "Invalid", "message": "not programmed"}
            if c.get("type") == "Programmed" else c for c in lis.get("conditions", [])]}
        for lis in _as_list(status.get("listeners"))]
    return out


def stamp_conditions(new: Sequence[Mapping[str, Any]], old: Sequence[Mapping[str, Any]],
                     now: str) -> list[dict[str, Any]]:
    """``new`` conditions with ``lastTransitionTime``: kept from ``old`` where the type's
    status did not change, ``now`` where it did (apimachinery's semantics)."""
    before = {c.get("type"): c for c in map(_as_map, old)}
    out = []
    for c in new:
        prev = before.get(c.get("type"))
        keep = prev is not None and prev.get("status") == c.get("status") \
            and prev.get("lastTransitionTime")
        out.append({**c, "lastTransitionTime": prev["lastTransitionTime"] if keep and prev
                    else now})
    return out
