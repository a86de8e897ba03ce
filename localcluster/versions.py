"""Pinned versions of everything the local control plane is built from, and how to build it.

One place to bump a version: the wrapper Go modules under ``localcluster/go/`` must pin the
same versions (``build`` checks that the ``require`` line matches before it builds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

KUBERNETES = "v1.35.4"
ETCD = "v3.6.16"
KWOK = "v0.8.0"
HELM = "v3.22.0"
CLI_UTILS = "v0.37.2"  # kstatus, the status reader Flux uses (a test helper, not a cluster part)

# The metrics pipeline (built, run as pods on the real node). prometheus-operator's version is
# also the source of its CRDs (``localcluster crds prometheus-operator``): one pin for both.
PROMETHEUS = "v0.316.0"  # the Go module's version of Prometheus 3.16.0
PROMETHEUS_OPERATOR = "v0.85.0"
METRICS_SERVER = "v0.9.0"
# custom.metrics.k8s.io from Prometheus (the in-flight HPAs' per-pod metrics).
PROMETHEUS_ADAPTER = "v0.12.0"
# Event-driven autoscaling (scale to zero): KEDA's operator and its external.metrics.k8s.io
# adapter. Its go.mod asks for a newer Go than the local toolchain; the go command fetches
# that one (GOTOOLCHAIN) through the module proxy.
KEDA = "v2.21.1"
KEDA_GO = "go1.27.4"

# Add-on CRD sources (downloaded as Go modules, never built).
GATEWAY_API = "v1.6.3"

KUBERNETES_BUILD_DATE = "2026-04-15T18:01:22Z"  # the release's tag time, for reproducible builds


def _k8s_version_ldflags() -> list[str]:
    major, minor = KUBERNETES.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate={KUBERNETES_BUILD_DATE}",
        ]
    return flags


def _helm_ldflags() -> list[str]:
    # Helm's default Capabilities.KubeVersion (used by `helm template` and lint without a
    # cluster) is set at link time; make it the version of the local control plane.
    major, minor = KUBERNETES.lstrip("v").split(".")[:2]
    return [
        f"-X helm.sh/helm/v3/internal/version.version={HELM}",
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
        f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor={major}",
        f"-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor={minor}",
        f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor={major}",
        f"-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor={minor}",
    ]


def _prometheus_ldflags() -> list[str]:
    # The module's v0.3XX.Y is Prometheus 3.XX.Y (what /api/v1/status/buildinfo reports).
    minor, patch = PROMETHEUS.lstrip("v").split(".")[1:]
    pkg = "github.com/prometheus/common/version"
    return [f"-X {pkg}.Version=3.{int(minor) - 300}.{patch}", f"-X {pkg}.Branch=HEAD",
            f"-X {pkg}.Revision={PROMETHEUS}"]


@dataclass(frozen=True)
class Component:
    """One wrapper Go module and the binaries built from it."""

    name: str  # wrapper module folder under localcluster/go/
    module: str  # the upstream Go module
    version: str
    packages: tuple[str, ...]  # Go packages to build (main packages)
    binaries: tuple[str, ...]  # resulting executables
    ldflags: tuple[str, ...] = field(default=())
    tags: tuple[str, ...] = field(default=())  # go build -tags
    toolchain: str = ""  # GOTOOLCHAIN for its build when the module needs a newer Go

    @property
    def bin_dir_name(self) -> str:
        return f"{self.name}-{self.version}"


COMPONENTS: tuple[Component, ...] = (
    Component(
        name="etcd",
        module="go.etcd.io/etcd/server/v3",
        version=ETCD,
        packages=(".",),
        binaries=("etcd",),
        ldflags=(f"-X go.etcd.io/etcd/api/v3/version.GitSHA=release-{ETCD}",),
    ),
    Component(
        name="kubernetes",
        module="k8s.io/kubernetes",
        version=KUBERNETES,
        packages=tuple(
            f"k8s.io/kubernetes/cmd/{c}"
            for c in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
                      "kubelet", "kube-proxy")
        ),
        binaries=("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl",
                  "kubelet", "kube-proxy"),
        ldflags=tuple(_k8s_version_ldflags()),
    ),
    Component(
        name="kwok",
        module="sigs.k8s.io/kwok",
        version=KWOK,
        packages=("sigs.k8s.io/kwok/cmd/kwok",),
        binaries=("kwok",),
        ldflags=(f"-X sigs.k8s.io/kwok/pkg/consts.Version={KWOK.lstrip('v')}",),
    ),
    Component(
        name="helm",
        module="helm.sh/helm/v3",
        version=HELM,
        packages=("helm.sh/helm/v3/cmd/helm",),
        binaries=("helm",),
        ldflags=tuple(_helm_ldflags()),
    ),
    Component(
        name="kstatus",
        module="sigs.k8s.io/cli-utils",
        version=CLI_UTILS,
        packages=(".",),
        binaries=("kstatus",),
    ),
    Component(
        name="prometheus",
        module="github.com/prometheus/prometheus",
        version=PROMETHEUS,
        packages=("github.com/prometheus/prometheus/cmd/prometheus",),
        binaries=("prometheus",),
        ldflags=tuple(_prometheus_ldflags()),
        # Kubernetes service discovery only (no cloud SD plugins); no builtinassets: the web
        # UI is not embedded, the HTTP API (/api/v1/*) is what tests and the operator use.
        tags=("remove_all_sd", "enable_kubernetes_sd"),
    ),
    Component(
        name="prometheus-operator",
        module="github.com/prometheus-operator/prometheus-operator",
        version=PROMETHEUS_OPERATOR,
        packages=(
            "github.com/prometheus-operator/prometheus-operator/cmd/operator",
            "github.com/prometheus-operator/prometheus-operator/cmd/prometheus-config-reloader",
        ),
        binaries=("operator", "prometheus-config-reloader"),
        ldflags=(
            f"-X github.com/prometheus/common/version.Version={PROMETHEUS_OPERATOR.lstrip('v')}",
            f"-X github.com/prometheus/common/version.Revision={PROMETHEUS_OPERATOR}",
        ),
    ),
    Component(
        name="metrics-server",
        module="sigs.k8s.io/metrics-server",
        version=METRICS_SERVER,
        packages=("sigs.k8s.io/metrics-server/cmd/metrics-server",),
        binaries=("metrics-server",),
        ldflags=(f"-X k8s.io/client-go/pkg/version.gitVersion={METRICS_SERVER}",),
    ),
    Component(
        name="prometheus-adapter",
        module="sigs.k8s.io/prometheus-adapter",
        version=PROMETHEUS_ADAPTER,
        packages=("sigs.k8s.io/prometheus-adapter/cmd/adapter",),
        binaries=("prometheus-adapter",),
    ),
    Component(
        name="keda",
        module="github.com/kedacore/keda/v2",
        version=KEDA,
        packages=("github.com/kedacore/keda/v2/cmd/operator",
                  "github.com/kedacore/keda/v2/cmd/adapter"),
        # Upstream's names (its images run /keda and /keda-adapter); "operator" is taken.
        binaries=("keda", "keda-adapter"),
        ldflags=(f"-X github.com/kedacore/keda/v2/version.Version={KEDA.lstrip('v')}",
                 f"-X github.com/kedacore/keda/v2/version.GitCommit={KEDA}"),
        toolchain=KEDA_GO,
    ),
)


def component(name: str) -> Component:
    for c in COMPONENTS:
        if c.name == name:
            return c
    raise KeyError(f"unknown component {name!r}; known: {', '.join(c.name for c in COMPONENTS)}")


def component_of_binary(binary: str) -> Component:
    for c in COMPONENTS:
        if binary in c.binaries:
            return c
    raise KeyError(f"no component builds {binary!r}")


def toolchain_of(module: str) -> str:
    """The Go toolchain a pinned module needs (``""``: the local one); downloading it needs
    that one too, since the go command refuses a module that asks for a newer Go."""
    return next((c.toolchain for c in COMPONENTS if c.module == module), "")
