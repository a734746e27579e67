"""``torchship serve``: its options, generated from the settings dataclasses, and the command.

    torchship serve --store ./models                         every model and version in the store
    torchship serve --model ./models/bbc:2 --workers 2       one package, two worker processes
    torchship serve --store ./models --inference_port 0      any free port (printed)
    torchship serve --store ./models --device cuda           workers round-robin over the GPUs
    torchship serve --config serve.yaml --batch_size 16      options from a YAML file; flags after it win
    torchship serve --store ./models --print_config          this run's options as YAML (a serve.yaml)
    torchship serve --ts_config config.properties --model_store ./model-store --models all
                                                             TorchServe's config and .mar archives

Every field of :class:`ModelSettings` and :class:`ServerSettings` is an option of the same name with the
field's docstring as its help, and a key of a ``--config`` file: a new setting needs no line here. Only
``--model`` (packages to serve besides the store), ``--config``, ``--ts_config`` and jsonargparse's
``--print_config`` are the command's own. ``--ts_config`` reads TorchServe's ``config.properties``
(:mod:`torchship.serving.mar.properties`) into the defaults of these options, so that every option given,
on the command line or in a ``--config`` file, wins over it (TorchServe: the command line over the file);
the keys it does not honour are logged at start, and printed to stderr with ``--print_config``. Paths in
a config file are relative to the working directory. Two shapes differ from jsonargparse's defaults, so
that options read as they always have: a bool is a flag that also takes a value (``--health_auth``,
``--token_auth false``; ``use_X`` is also ``--no_X``), and a tuple takes its items space-separated
(``--cors_allowed_origins https://a.example https://b.example``).

Keys: generated at start into ./key_file.json (owner-only); ``torchship key management`` prints one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace  # type: ignore[attr-defined]

from torchship.dataclass_fields import SettingField, settings_fields
from torchship.errors import ConfigError
from torchship.serving.mar.properties import TsConfig, read_ts_config
from torchship.serving.settings import ModelSettings, ServerSettings

__all__ = [
    "SettingField",
    "add_serve_arguments",
    "add_settings_arguments",
    "apply_ts_config",
    "run_serve",
    "serve_settings",
    "settings_fields",
]

# Fields that are not options: the model options fill ``model_defaults``.
_NOT_OPTIONS = {"model_defaults"}

logger = logging.getLogger("torchship.serving")


def add_serve_arguments(parser: ArgumentParser) -> None:
    """Add the ``serve`` options to ``parser`` (a jsonargparse subcommand parser): ``--config``,
    ``--model``, and one option per field of :class:`ModelSettings` and :class:`ServerSettings`."""
    parser.add_argument(
        "--config",
        action=ActionConfigFile,
        metavar="FILE",
        help="YAML file with any of these options as keys (batch_size: 16); options after it override it",
    )
    parser.add_argument(
        "--model",
        type=str,
        nargs="*",
        default=[],
        help="Package directories or <store>/<name>[:VERSION] to serve, with or without --store",
    )
    parser.add_argument(
        "--ts_config",
        type=str | None,
        default=None,
        metavar="FILE",
        help="TorchServe's config.properties: its settings become these options' defaults (every option "
        "given, here or in --config, wins; its addresses name their ports, so override them with "
        "--inference_address and friends); the keys torchship does not honour are logged at start",
    )
    add_settings_arguments(parser, ModelSettings, "every model version")
    add_settings_arguments(parser, ServerSettings, "server")
    # The generated usage would list all ~50 options a second time.
    parser.usage = (
        "%(prog)s [--config FILE] [--ts_config FILE] [--store DIR] [--model [PACKAGE ...]] "
        "[--SETTING VALUE ...]"
    )


def add_settings_arguments(parser: ArgumentParser, cls: type[Any], title: str) -> None:
    """Add an option ``--NAME`` per field of the dataclass ``cls``, in one help group per section of the
    class (its ``# ---- name`` comments), or one group named ``title`` where it has none."""
    groups: dict[str, Any] = {}
    for setting in settings_fields(cls):
        if setting.name in _NOT_OPTIONS:
            continue
        heading = f"{setting.section or title} ({cls.__name__})"
        if heading not in groups:
            groups[heading] = parser.add_argument_group(heading)
        groups[heading].add_argument(f"--{setting.name}", help=setting.help, **_option_shape(setting))


def _option_shape(setting: SettingField) -> dict[str, Any]:
    """How ``setting`` reads on the command line; jsonargparse checks the value against its type."""
    hint, default = setting.type, setting.default
    if hint is bool:
        if setting.name.startswith("use_"):  # --use_snapshot, and --no_snapshot
            yes_no = ActionYesNo(yes_prefix="use_", no_prefix="no_")
            return {"action": yes_no, "nargs": "?", "default": default}
        return {"type": bool, "nargs": "?", "const": True, "default": default}  # --health_auth [false]
    if typing.get_origin(hint) is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        # Items space-separated, as argparse users expect: --allowed_hosts a.example b.example
        return {"type": _path_as_str(typing.get_args(hint)[0]), "nargs": "*", "default": list(default)}
    if hint is Path:
        return {"type": str, "default": str(default)}
    return {"type": hint, "default": default}


def _path_as_str(hint: Any) -> Any:
    # jsonargparse's help prints a bare Path type as "<class 'Path'>"; the settings make a str a Path.
    return str if hint is Path else hint


def apply_ts_config(
    parser: ArgumentParser, args: Sequence[str], environ: Mapping[str, str] | None = None
) -> TsConfig | None:
    """Make the ``serve`` options' defaults what ``--ts_config`` (if ``args`` name one, directly or in a
    ``--config`` file) says, so that the options given win; returns what the file said. ``parser`` is the
    ``torchship`` parser, ``args`` its whole command line. With ``--print_config`` the keys not applied
    are printed to stderr (the YAML goes to stdout)."""
    if not args or args[0] != "serve" or any(arg in ("-h", "--help") for arg in args):
        return None
    if not any(arg.startswith(("--ts_config", "--config")) for arg in args):
        return None  # no file could name one: no second parse
    printing = any(arg.startswith("--print_config") for arg in args)
    # A first pass without --print_config (which prints and exits) finds the file wherever it was given.
    first = parser.parse_args([arg for arg in args if not arg.startswith("--print_config")])
    path = first["serve"].ts_config
    if path is None:
        return None
    config = read_ts_config(Path(path), os.environ if environ is None else environ)
    parser.set_defaults({f"serve.{name}": _option_value(value) for name, value in config.values.items()})
    if printing:
        for key, why in config.not_honoured:
            print(f"warning: {config.path}: {key} is not honoured: {why}", file=sys.stderr)
        for key, why in config.not_needed:
            print(f"note: {config.path}: {key} is not needed: {why}", file=sys.stderr)
    return config


def _option_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def run_serve(cfg: Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status. Raises ``TorchshipError`` for bad input."""
    from torchship.serving.runner import run
    from torchship.serving.server import Server
    from torchship.store import resolve_model

    if cfg.store is None and not cfg.model and cfg.model_store is None:
        raise ConfigError(
            "nothing to serve: give --store DIR (e.g. ./models), --model PACKAGE, or TorchServe's "
            "--model_store DIR (also model_store in --ts_config)"
        )
    settings = serve_settings(cfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if cfg.ts_config is not None:
        _log_ts_report(read_ts_config(Path(cfg.ts_config), os.environ))
    packages = [resolve_model(ref) for ref in cfg.model]
    run(Server(settings, packages=packages))
    return 0


def _log_ts_report(config: TsConfig) -> None:
    """One warning per key not honoured, one info line per key not needed."""
    for key, why in config.not_honoured:
        logger.warning("%s: %s is not honoured: %s", config.path, key, why)
    for key, why in config.not_needed:
        logger.info("%s: %s is not needed: %s", config.path, key, why)


def serve_settings(cfg: Namespace) -> ServerSettings:
    """The server's settings from parsed ``serve`` arguments (validated: a bad value is a ConfigError)."""
    model_defaults = ModelSettings(**_values(cfg, ModelSettings))
    return ServerSettings(**_values(cfg, ServerSettings), model_defaults=model_defaults)


def _values(cfg: Namespace, cls: type[Any]) -> dict[str, Any]:
    values = {
        field.name: cfg[field.name] for field in dataclasses.fields(cls) if field.name not in _NOT_OPTIONS
    }
    return {name: tuple(value) if isinstance(value, list) else value for name, value in values.items()}
