"""``torchship serve``: the arguments and the command, wired into the CLI by ``torchship.cli``.

torchship serve --store ./models                         every model and version in the store
torchship serve --model ./models/bbc:2 --workers 2       one package, two worker processes
torchship serve --store ./models --inference_port 0      any free port (printed)
torchship serve --store ./models --device cuda           workers round-robin over the GPUs
torchship serve --store ./models --inference_address http://0.0.0.0:8080   inference on every interface
                                                         (then the inference key is required too)

Keys: generated at start into ./key_file.json (owner-only); ``torchship key management`` prints one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace

from torchship.errors import ConfigError
from torchship.serving.settings import DEFAULT_MAX_REQUEST_SIZE, ModelSettings, ServerSettings

__all__ = ["add_serve_arguments", "run_serve", "serve_settings"]

_DEFAULTS = ModelSettings()
_SERVER = ServerSettings()


def add_serve_arguments(parser: ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser`` (a jsonargparse subcommand parser)."""
    parser.add_argument(
        "--store",
        type=str | None,
        default=None,
        help="Model store to serve: every model, every version, the latest as default",
    )
    parser.add_argument(
        "--model",
        type=str,
        nargs="*",
        default=[],
        help="Package directories or <store>/<name>[:VERSION] to serve as well",
    )
    parser.add_argument(
        "--host", type=str, default=_SERVER.host, help="Interface for the listeners without an --*_address"
    )
    for name, default in (("inference", 8080), ("management", 8081), ("metrics", 8082)):
        parser.add_argument(
            f"--{name}_address",
            type=str | None,
            default=None,
            help=f"Where the {name} listener binds: http://0.0.0.0:{default}, https://HOST:PORT, HOST:PORT "
            "or HOST (default: --host and the port below)",
        )
    parser.add_argument("--inference_port", type=int, default=8080, help="Inference API port (0: any)")
    parser.add_argument("--management_port", type=int, default=8081, help="Management API port (0: any)")
    parser.add_argument("--metrics_port", type=int, default=8082, help="Prometheus metrics port (0: any)")
    parser.add_argument("--batch_size", type=int, default=_DEFAULTS.batch_size, help="Largest batch")
    parser.add_argument(
        "--max_batch_delay",
        type=float,
        default=_DEFAULTS.max_batch_delay,
        help="Milliseconds a request may wait for a batch while other batches run",
    )
    parser.add_argument(
        "--workers",
        type=int | None,
        default=None,
        help="Worker processes per version (default: one per GPU, else one per CPU core, at most 4)",
    )
    parser.add_argument(
        "--job_queue_size",
        type=int,
        default=_DEFAULTS.job_queue_size,
        help="Requests that may wait per version before 503",
    )
    parser.add_argument(
        "--response_timeout",
        type=float,
        default=_DEFAULTS.response_timeout,
        help="Seconds before a waiting or running request is answered 504",
    )
    parser.add_argument(
        "--startup_timeout",
        type=float,
        default=_DEFAULTS.startup_timeout,
        help="Seconds a worker may take to load the model before it is killed and retried",
    )
    parser.add_argument(
        "--torch_threads",
        type=int | None,
        default=None,
        help="torch threads per worker (default: the cores split between the workers)",
    )
    parser.add_argument(
        "--device",
        type=str,
        default=_DEFAULTS.device,
        help="auto (a GPU if torch sees one, else the CPU), cpu, cuda (workers round-robin over the GPUs), "
        "cuda:N, mps",
    )
    parser.add_argument(
        "--max_request_size",
        type=int,
        default=DEFAULT_MAX_REQUEST_SIZE,
        help="Largest request body in bytes (413 above)",
    )
    parser.add_argument(
        "--model_roots",
        type=str,
        nargs="*",
        default=[],
        help="Directories the management API may register packages from, besides the store",
    )
    parser.add_argument(
        "--snapshot",
        type=str | None,
        default=None,
        help="Registry snapshot file (default: <store>/.serve-snapshot.json)",
    )
    parser.add_argument(
        "--no_snapshot", action="store_true", help="Neither restore nor write the registry snapshot"
    )
    parser.add_argument(
        "--graceful_timeout",
        type=float,
        default=30.0,
        help="Seconds to let in-flight requests finish at shutdown",
    )
    _add_security_arguments(parser)
    _add_connection_arguments(parser)
    _add_limit_arguments(parser)


def _add_security_arguments(parser: ArgumentParser) -> None:
    parser.add_argument("--tls_cert", type=str | None, default=None, help="PEM certificate chain: HTTPS")
    parser.add_argument("--tls_key", type=str | None, default=None, help="PEM private key of --tls_cert")
    parser.add_argument(
        "--token_auth",
        type=bool,
        default=_SERVER.token_auth,
        help="Require 'Authorization: Bearer <key>' (TorchServe's token authorization); false only behind a "
        "proxy that authenticates",
    )
    parser.add_argument(
        "--key_file",
        type=str,
        default=str(_SERVER.key_file),
        help="Where the generated keys are written (owner-only, deleted at shutdown), or, with "
        "--keys_from_file, read from",
    )
    parser.add_argument(
        "--keys_from_file",
        action="store_true",
        help="Read the keys from --key_file (e.g. a mounted secret); TORCHSHIP_MANAGEMENT_KEY, "
        "TORCHSHIP_INFERENCE_KEY and TORCHSHIP_API_KEY in the environment take precedence",
    )
    parser.add_argument(
        "--key_expiration",
        type=float | None,
        default=_SERVER.key_expiration,
        help="Minutes a generated management or inference key stays valid (default: no expiry); "
        "GET /token?type=... with the API key makes a new one",
    )
    parser.add_argument(
        "--inference_auth",
        type=bool | None,
        default=_SERVER.inference_auth,
        help="Require the inference key on the inference API: true, false, or null (default: only when a "
        "listener binds a non-loopback address)",
    )
    parser.add_argument(
        "--health_auth", action="store_true", help="Require the inference key on /ping and /v2/health/* too"
    )
    parser.add_argument("--metrics_auth", action="store_true", help="Require the management key on /metrics")
    parser.add_argument(
        "--cors_allowed_origins",
        type=str,
        nargs="*",
        default=list(_SERVER.cors_allowed_origins),
        help="Origins whose browsers may call the inference API (https://app.example.com, or *); others: 403",
    )
    parser.add_argument(
        "--management_allowed_origins",
        type=str,
        nargs="*",
        default=list(_SERVER.management_allowed_origins),
        help="Origins whose browsers may call the management API and /metrics (default: none)",
    )
    parser.add_argument(
        "--allowed_hosts",
        type=str,
        nargs="*",
        default=list(_SERVER.allowed_hosts),
        help="Host names accepted besides loopback ones on a loopback bind (an ingress's); others: 403",
    )
    parser.add_argument(
        "--allow_code_models",
        action="store_true",
        help="Let the management API register models whose loading runs code (TorchScript, torch.export)",
    )


def _add_connection_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--max_connections",
        type=int,
        default=_SERVER.max_connections,
        help="Open connections per listener; one more is closed at once",
    )
    parser.add_argument(
        "--max_header_size",
        type=int,
        default=_SERVER.max_header_size,
        help="Bytes of request line and headers (431 above)",
    )
    parser.add_argument(
        "--header_timeout",
        type=float,
        default=_SERVER.header_timeout,
        help="Seconds a client may take to send the request line and headers",
    )
    parser.add_argument(
        "--body_timeout",
        type=float,
        default=_SERVER.body_timeout,
        help="Seconds a client may take to send a request body (408 after)",
    )
    parser.add_argument(
        "--keep_alive_timeout",
        type=float,
        default=_SERVER.keep_alive_timeout,
        help="Seconds an idle keep-alive connection is kept open",
    )


def _add_limit_arguments(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--max_workers_per_version",
        type=int,
        default=_SERVER.max_workers_per_version,
        help="Most worker processes one version may have (400 above)",
    )
    parser.add_argument(
        "--max_workers_total",
        type=int,
        default=_SERVER.max_workers_total,
        help="Most worker processes over every version",
    )
    parser.add_argument(
        "--max_archive_size",
        type=int,
        default=_SERVER.max_archive_size,
        help="Largest archive the management API registers, in bytes",
    )
    parser.add_argument(
        "--max_package_size",
        type=int,
        default=_SERVER.max_package_size,
        help="Largest package a registration may unpack or copy into the store, in bytes",
    )
    parser.add_argument(
        "--max_package_files",
        type=int,
        default=_SERVER.max_package_files,
        help="Most files in one registered package",
    )
    parser.add_argument(
        "--store_quota",
        type=int | None,
        default=_SERVER.store_quota,
        help="Bytes the store may hold after a registration (null: no quota)",
    )


def run_serve(cfg: Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status. Raises ``TorchshipError`` for bad input."""
    from torchship.serving.runner import run
    from torchship.serving.server import Server
    from torchship.store import resolve_model

    if cfg.store is None and not cfg.model:
        raise ConfigError("nothing to serve: give --store DIR (e.g. ./models) and/or --model PACKAGE")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = serve_settings(cfg)
    packages = [resolve_model(ref) for ref in cfg.model]
    run(Server(settings, packages=packages))
    return 0


def serve_settings(cfg: Namespace) -> ServerSettings:
    """The server's settings from parsed ``serve`` arguments (validated: a bad value is a ConfigError)."""
    model_settings = ModelSettings(
        batch_size=cfg.batch_size,
        max_batch_delay=cfg.max_batch_delay,
        workers=cfg.workers,
        job_queue_size=cfg.job_queue_size,
        response_timeout=cfg.response_timeout,
        startup_timeout=cfg.startup_timeout,
        torch_threads=cfg.torch_threads,
        device=cfg.device,
    )
    return ServerSettings(
        host=cfg.host,
        inference_address=cfg.inference_address,
        management_address=cfg.management_address,
        metrics_address=cfg.metrics_address,
        inference_port=cfg.inference_port,
        management_port=cfg.management_port,
        metrics_port=cfg.metrics_port,
        tls_cert=Path(cfg.tls_cert) if cfg.tls_cert is not None else None,
        tls_key=Path(cfg.tls_key) if cfg.tls_key is not None else None,
        token_auth=cfg.token_auth,
        key_file=Path(cfg.key_file),
        keys_from_file=cfg.keys_from_file,
        key_expiration=cfg.key_expiration,
        inference_auth=cfg.inference_auth,
        health_auth=cfg.health_auth,
        metrics_auth=cfg.metrics_auth,
        cors_allowed_origins=tuple(cfg.cors_allowed_origins),
        management_allowed_origins=tuple(cfg.management_allowed_origins),
        allowed_hosts=tuple(cfg.allowed_hosts),
        allow_code_models=cfg.allow_code_models,
        max_request_size=cfg.max_request_size,
        max_connections=cfg.max_connections,
        max_header_size=cfg.max_header_size,
        header_timeout=cfg.header_timeout,
        body_timeout=cfg.body_timeout,
        keep_alive_timeout=cfg.keep_alive_timeout,
        max_workers_per_version=cfg.max_workers_per_version,
        max_workers_total=cfg.max_workers_total,
        max_archive_size=cfg.max_archive_size,
        max_package_size=cfg.max_package_size,
        max_package_files=cfg.max_package_files,
        store_quota=cfg.store_quota,
        store=Path(cfg.store) if cfg.store is not None else None,
        model_roots=tuple(Path(root) for root in cfg.model_roots),
        snapshot=Path(cfg.snapshot) if cfg.snapshot is not None else None,
        use_snapshot=not cfg.no_snapshot,
        graceful_timeout=cfg.graceful_timeout,
        model_defaults=model_settings,
    )
