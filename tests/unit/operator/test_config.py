"""config: flags over environment over defaults; bad values are refused with the setting named."""

from __future__ import annotations

import pytest
from msv_operator.config import DEFAULT_IMAGES, ConfigError, RuntimeImages, load


def test_defaults_watch_all_namespaces() -> None:
    command, cfg = load(["run"], {})
    assert command == "run"
    assert cfg.clusterwide and cfg.namespaces == ()
    assert cfg.images == DEFAULT_IMAGES
    assert (cfg.metrics_port, cfg.health_port, cfg.log_format) == (8080, 8081, "text")
    assert cfg.field_manager == "modelservice-operator"


def test_environment_is_read() -> None:
    _, cfg = load(["run"], {"MSV_NAMESPACES": "ml, serving ,", "MSV_TORCH_IMAGE": "img:1",
                            "MSV_LOG_FORMAT": "json", "MSV_METRICS_PORT": "9090",
                            "MSV_MAX_WORKERS": "3", "MSV_TORCH_GPU_IMAGE": ""})
    assert cfg.namespaces == ("ml", "serving")
    assert not cfg.clusterwide
    assert (cfg.log_format, cfg.metrics_port, cfg.max_workers) == ("json", 9090, 3)
    assert cfg.images["torch"] == RuntimeImages("img:1", None)


def test_flags_win_over_environment() -> None:
    env = {"MSV_NAMESPACES": "ml", "MSV_LOG_FORMAT": "json", "MSV_HEALTH_PORT": "1"}
    _, cfg = load(["run", "--namespace", "a", "-n", "b", "--namespace", "a",
                   "--log-format", "text", "--health-port", "0"], env)
    assert cfg.namespaces == ("a", "b")
    assert (cfg.log_format, cfg.health_port) == ("text", 0)
    _, everywhere = load(["run", "--all-namespaces"], env)
    assert everywhere.clusterwide


@pytest.mark.parametrize(("env", "needle"), [
    ({"MSV_METRICS_PORT": "eighty"}, "MSV_METRICS_PORT"),
    ({"MSV_LOG_FORMAT": "xml"}, "log format"),
    ({"MSV_HEALTH_PORT": "70000"}, "health port"),
    ({"MSV_MAX_WORKERS": "0"}, "max workers"),
    ({"MSV_RESYNC_SECONDS": "-1"}, "resync"),
    ({"MSV_PROMETHEUS_URL": "prometheus:9090"}, "prometheus url"),
    ({"MSV_PROMETHEUS_TIMEOUT": "0"}, "prometheus timeout"),
    ({"MSV_MEASURE_SECONDS": "soon"}, "MSV_MEASURE_SECONDS"),
])
def test_bad_values_are_refused_with_the_setting_named(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(["run"], env)


def test_prometheus_settings_from_environment_and_flags() -> None:
    _, cfg = load(["run"], {})
    assert (cfg.prometheus_url, cfg.prometheus_timeout, cfg.measure_seconds) == ("", 5.0, 60.0)
    _, cfg = load(["run", "--measure-seconds", "30"],
                  {"MSV_PROMETHEUS_URL": "http://10.96.0.90:9090",
                   "MSV_PROMETHEUS_TIMEOUT": "2.5", "MSV_MEASURE_SECONDS": "90"})
    assert (cfg.prometheus_url, cfg.prometheus_timeout, cfg.measure_seconds) == (
        "http://10.96.0.90:9090", 2.5, 30.0)


def test_cli_reports_bad_config_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    from msv_operator.config import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", "--log-format", "xml"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_in_cluster_login_uses_the_service_address_the_kubelet_gives_pods() -> None:
    import kopf
    from msv_operator.handlers import in_cluster_address

    info = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert in_cluster_address(info, env).server == "https://10.96.0.1:443"
    assert in_cluster_address(info, env).token == "t"
    v6 = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert in_cluster_address(info, v6).server == "https://[fd00::1]:6443"
    assert in_cluster_address(info, {}).server == "https://kubernetes.default.svc"
