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
    ({"MSV_MODEL_CACHE_URL": "cache:8090"}, "model cache url"),
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


def test_gpu_fit_is_on_by_default_and_reads_no_secret() -> None:
    from msv_operator import prices

    _, cfg = load(["run"], {})
    assert (cfg.gpu_fit, cfg.gpu_fit_read_credentials) == (True, False)
    assert cfg.gpu_prices == prices.DEFAULT_PRICES
    _, off = load(["run"], {"MSV_GPU_FIT": "false", "MSV_GPU_FIT_READ_CREDENTIALS": "true"})
    assert (off.gpu_fit, off.gpu_fit_read_credentials) == (False, True)
    _, flags = load(["run", "--no-gpu-fit"], {"MSV_GPU_FIT": "true"})
    assert flags.gpu_fit is False


def test_a_gpu_price_table_is_read_over_the_list_prices() -> None:
    env = {"MSV_GPU_PRICES": '{"products": {"NVIDIA-L4": 0.7}, '
                             '"mig": {"NVIDIA-H100-80GB-HBM3": {"1g.10gb": 1.5}}}'}
    _, cfg = load(["run"], env)
    assert cfg.gpu_prices.products["NVIDIA-L4"] == 0.7
    assert cfg.gpu_prices.products["NVIDIA-A100-SXM4-80GB"] == 5.12
    assert cfg.gpu_prices.mig == {"NVIDIA-H100-80GB-HBM3": {"1g.10gb": 1.5}}
    _, flag = load(["run", "--gpu-prices", '{"products": {"NVIDIA-L4": 0.5}}'], env)
    assert flag.gpu_prices.products["NVIDIA-L4"] == 0.5
    _, empty = load(["run"], {"MSV_GPU_PRICES": ""})
    assert empty.gpu_prices.products["NVIDIA-L4"] == 0.80
    assert empty.gpu_prices.cpu == 0.0446
    _, cpu = load(["run", "--gpu-prices", '{"cpu": 0.03}'], env)
    assert (cpu.gpu_prices.cpu, cpu.gpu_prices.products["NVIDIA-L4"]) == (0.03, 0.80)


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["run"], {"MSV_GPU_PRICES": '{"products": {"NVIDIA A100": 4}}'},
     "MSV_GPU_PRICES: gpuPrices.products.NVIDIA A100: 'NVIDIA A100' is not a known GPU "
     "product (nvidia.com/gpu.product); known: Tesla-T4, "),
    (["run"], {"MSV_GPU_PRICES": "{products: 1}"},
     "MSV_GPU_PRICES: not JSON (Expecting property name enclosed in double quotes at "
     "character 1)"),
    (["run"], {"MSV_GPU_PRICES": '{"products": []}'},
     "MSV_GPU_PRICES: gpuPrices.products: expected an object"),
    (["run"], {"MSV_GPU_PRICES": '{"mig": {"NVIDIA-L4": {"big": 1}}}'},
     "MSV_GPU_PRICES: gpuPrices.mig.NVIDIA-L4.big: not a MIG profile such as 1g.10gb"),
    (["run", "--gpu-prices", '{"products": {"NVIDIA-L4": "cheap"}}'], {},
     "--gpu-prices: gpuPrices.products.NVIDIA-L4: 'cheap' is not a price per hour"),
    (["run"], {"MSV_GPU_PRICES": '{"cpu": -1}'},
     "MSV_GPU_PRICES: gpuPrices.cpu: -1 is not a price per hour"),
    (["run"], {"MSV_GPU_FIT": "sometimes"}, "MSV_GPU_FIT='sometimes': expected true or false"),
])
def test_a_bad_gpu_setting_is_refused_naming_it(argv: list[str], env: dict[str, str],
                                                message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(argv, env)
    assert str(e.value).startswith(message)


def test_the_model_cache_url_is_off_by_default_and_read_from_env_and_flag() -> None:
    assert load(["run"], {})[1].model_cache_url == ""
    env = {"MSV_MODEL_CACHE_URL": "http://agent.msv-system.svc:8090"}
    assert load(["run"], env)[1].model_cache_url == "http://agent.msv-system.svc:8090"
    flag = load(["run", "--model-cache-url", "http://other:8090"], env)[1]
    assert flag.model_cache_url == "http://other:8090"
