"""The keys of TorchServe's ``config.properties`` that torchship does not act on, each with the reason a
user is told, and the ``TS_*`` environment variables that may set keys (:mod:`.properties` reads the file).

* :data:`NOT_HONOURED`: a behaviour torchship does not have (gRPC, workflows, Java keystores...);
* :data:`NOT_NEEDED`: what the key tunes does not exist in torchship (the JVM, Netty);
* :data:`BOOLEANS`: switches whose one value is what torchship does anyway, and the other is not had.
"""

from __future__ import annotations

__all__ = ["BOOLEANS", "ENVIRONMENT_KEYS", "NOT_HONOURED", "NOT_NEEDED"]

# The keys TorchServe's ConfigManager lets a TS_* environment variable set (its TS_-prefixed constants), by
# variable. Most are TS_<KEY>; a few are not (TS_TOKEN_EXPIRATION_TIME_MIN, TS_DEBUG).
_ENV_KEYS = [
    "debug",
    "inference_address",
    "management_address",
    "metrics_address",
    "load_models",
    "blacklist_env_vars",
    "default_workers_per_model",
    "default_response_timeout",
    "default_startup_timeout",
    "unregister_model_timeout",
    "number_of_netty_threads",
    "netty_client_threads",
    "job_queue_size",
    "number_of_gpu",
    "metrics_config",
    "metrics_mode",
    "model_metrics_auto_detect",
    "disable_system_metrics",
    "ipex_enable",
    "cpu_launcher_enable",
    "cpu_launcher_args",
    "ipex_gpu_enable",
    "async_logging",
    "cors_allowed_origin",
    "cors_allowed_methods",
    "cors_allowed_headers",
    "decode_input_request",
    "keystore",
    "keystore_pass",
    "keystore_type",
    "certificate_file",
    "private_key_file",
    "max_request_size",
    "max_response_size",
    "limit_max_image_pixels",
    "default_service_handler",
    "service_envelope",
    "model_server_home",
    "model_store",
    "prefer_direct_buffer",
    "allowed_urls",
    "install_py_dep_per_model",
    "enable_metrics_api",
    "grpc_inference_address",
    "grpc_management_address",
    "grpc_inference_port",
    "grpc_management_port",
    "grpc_inference_max_connection_age_ms",
    "grpc_management_max_connection_age_ms",
    "grpc_inference_max_connection_age_grace_ms",
    "grpc_management_max_connection_age_grace_ms",
    "enable_grpc_ssl",
    "initial_worker_port",
    "initial_distribution_port",
    "workflow_store",
    "cpp_log_config",
    "ts_open_inference_protocol",
    "ts_header_key_sequence_id",
    "ts_header_key_sequence_start",
    "ts_header_key_sequence_end",
    "disable_token_authorization",
    "enable_model_api",
    "token_expiration_min",
]
_ENV_NAMES = {
    "debug": "TS_DEBUG",
    "token_expiration_min": "TS_TOKEN_EXPIRATION_TIME_MIN",
    "ts_open_inference_protocol": "TS_OPEN_INFERENCE_PROTOCOL",
    "ts_header_key_sequence_id": "TS_HEADER_KEY_SEQUENCE_ID",
    "ts_header_key_sequence_start": "TS_HEADER_KEY_SEQUENCE_START",
    "ts_header_key_sequence_end": "TS_HEADER_KEY_SEQUENCE_END",
}
ENVIRONMENT_KEYS = {_ENV_NAMES.get(key, f"TS_{key.upper()}"): key for key in _ENV_KEYS}
"""Environment variable -> the ``config.properties`` key it overrides under ``enable_envvars_config``."""

_GRPC = (
    "torchship serves no gRPC API: clients use REST (TorchServe's inference API, the Open Inference "
    "Protocol v2 under /v2, KServe v1 under /v1)"
)
NOT_HONOURED = {
    **dict.fromkeys(
        [
            "grpc_inference_address",
            "grpc_management_address",
            "grpc_inference_port",
            "grpc_management_port",
            "grpc_inference_max_connection_age_ms",
            "grpc_management_max_connection_age_ms",
            "grpc_inference_max_connection_age_grace_ms",
            "grpc_management_max_connection_age_grace_ms",
        ],
        _GRPC,
    ),
    "workflow_store": "torchship serves no workflows (TorchServe's workflow API); serve each model instead",
    "service_envelope": "torchship serves KServe v1 (/v1/models/NAME:predict) and the Open Inference "
    "Protocol v2 (/v2/models/NAME/infer) on their own routes, so no envelope is needed or applied",
    **dict.fromkeys(
        ["keystore", "keystore_pass", "keystore_type"],
        "Java keystores are not read: export the certificate and key as PEM (openssl pkcs12 -in KEYSTORE "
        "-nodes) and set certificate_file and private_key_file",
    ),
    "blacklist_env_vars": "workers inherit the server's environment: start torchship with only the "
    "variables the handlers need",
    "number_of_gpu": "choose GPUs with --device (cuda, cuda:N) or CUDA_VISIBLE_DEVICES",
    "metrics_config": "torchship's server metrics are fixed, no metrics.yaml is read (a handler's "
    "context.metrics still reach /metrics)",
    "system_metrics_cmd": "torchship collects no system metrics (CPU, memory, GPU): use a node exporter",
    "cpu_launcher_args": "torchship has no CPU launcher: pin cores with taskset or the container's limits",
    "default_service_handler": "name each archive's handler (torch-model-archiver --handler)",
    **dict.fromkeys(
        ["ts_header_key_sequence_id", "ts_header_key_sequence_start", "ts_header_key_sequence_end"],
        "sequence batching (stateful models) is not supported",
    ),
    "unregister_model_timeout": "torchship stops an unregistered version's workers within graceful_timeout "
    "(--graceful_timeout)",
    "cpp_log_config": "torchship has no C++ backend",
    "debug": "TorchServe's Java debug mode: torchship logs through Python's logging",
}
NOT_NEEDED = {
    "vmargs": "JVM options: torchship runs no JVM",
    "number_of_netty_threads": "Netty threads: torchship's HTTP side is one asyncio event loop",
    "netty_client_threads": "Netty threads: workers talk to the server over pipes",
    "async_logging": "torchship logs through Python's logging",
    "prefer_direct_buffer": "Netty buffers: torchship runs no JVM",
    "use_native_io": "Netty I/O: torchship runs no JVM",
    "io_ratio": "Netty I/O: torchship runs no JVM",
    "model_server_home": "TorchServe's install folder",
    "initial_worker_port": "workers talk to the server over pipes, not ports",
    "initial_distribution_port": "torchship starts no torchrun process groups",
    "metric_time_interval": "torchship collects no system metrics",
    "version": "TorchServe's own version, written by it",
    "cors_allowed_methods": "torchship answers CORS preflights with each API's methods",
    "cors_allowed_headers": "torchship answers CORS preflights with the headers the browser asks for",
    "model_metrics_auto_detect": "a handler's context.metrics always reach /metrics",
}
# key -> (the value that asks for torchship's own behaviour, why that needs nothing, why the other is not had)
BOOLEANS = {
    "install_py_dep_per_model": (
        False,
        "torchship never installs packages either",
        "torchship never installs packages: a model's requirements.txt is checked against the installed "
        "packages, and one missing fails that model's load naming the pip command to run",
    ),
    "enable_metrics_api": (
        True,
        "torchship always serves /metrics",
        "torchship always serves /metrics: bind metrics_address to a private interface instead",
    ),
    "disable_system_metrics": (
        True,
        "torchship collects no system metrics",
        "torchship collects no system metrics (CPU, memory, GPU): use a node exporter",
    ),
    "decode_input_request": (
        True,
        "handlers get JSON decoded and text/* as str, as TorchServe's default does",
        "handlers always get JSON decoded and text/* as str (TorchServe's default)",
    ),
    "limit_max_image_pixels": (
        True,
        "PIL's default image size limit applies",
        "PIL's default image size limit still applies in the handlers",
    ),
    "ipex_enable": (False, "off", "Intel Extension for PyTorch is not applied by torchship"),
    "ipex_gpu_enable": (False, "off", "Intel Extension for PyTorch is not applied by torchship"),
    "cpu_launcher_enable": (
        False,
        "off",
        "torchship has no CPU launcher: pin cores with taskset or the container's limits",
    ),
    "enable_grpc_ssl": (False, "off", _GRPC),
    "ts_open_inference_protocol": (
        False,
        "off",
        "torchship serves the Open Inference Protocol over REST (/v2) always, and never over gRPC",
    ),
}
