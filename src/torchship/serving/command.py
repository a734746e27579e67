"""``torchship serve``: the arguments and the command, wired into the CLI by ``torchship.cli``.

torchship serve --store ./models                         every model and version in the store
torchship serve --model ./models/bbc:2 --workers 2       one package, two worker processes
torchship serve --store ./models --inference_port 0      any free port (printed)
torchship serve --store ./models --device cuda           workers round-robin over the GPUs
"""

from __future__ import annotations

import logging
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace

from torchship.errors import ConfigError
from torchship.serving.settings import DEFAULT_MAX_REQUEST_SIZE, ModelSettings, ServerSettings

__all__ = ["add_serve_arguments", "run_serve"]

_DEFAULTS = ModelSettings()


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
    parser.add_argument("--host", type=str, default="127.0.0.1", help="Interface for all three listeners")
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


def run_serve(cfg: Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status. Raises ``TorchshipError`` for bad input."""
    from torchship.serving.listeners import run
    from torchship.serving.server import Server
    from torchship.store import resolve_model

    if cfg.store is None and not cfg.model:
        raise ConfigError("nothing to serve: give --store DIR (e.g. ./models) and/or --model PACKAGE")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
    settings = ServerSettings(
        host=cfg.host,
        inference_port=cfg.inference_port,
        management_port=cfg.management_port,
        metrics_port=cfg.metrics_port,
        max_request_size=cfg.max_request_size,
        store=Path(cfg.store) if cfg.store is not None else None,
        model_roots=tuple(Path(root) for root in cfg.model_roots),
        snapshot=Path(cfg.snapshot) if cfg.snapshot is not None else None,
        use_snapshot=not cfg.no_snapshot,
        graceful_timeout=cfg.graceful_timeout,
        model_defaults=model_settings,
    )
    packages = [resolve_model(ref) for ref in cfg.model]
    run(Server(settings, packages=packages))
    return 0
