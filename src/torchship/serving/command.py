"""``torchship serve``: its options, generated from the settings dataclasses, and the command.

    torchship serve --store ./models                         every model and version in the store
    torchship serve --model ./models/bbc:2 --workers 2       one package, two worker processes
    torchship serve --store ./models --inference_port 0      any free port (printed)
    torchship serve --store ./models --device cuda           workers round-robin over the GPUs
    torchship serve --config serve.yaml --batch_size 16      options from a YAML file; flags after it win
    torchship serve --store ./models --print_config          this run's options as YAML (a serve.yaml)
    torchship serve --ts_config config.properties --model_store ./model-store --models all
                                                             TorchServe's config and .mar archives
    torchship serve --model_dir /mnt/models --model_name bbc what KServe's storage initializer left

Every field of :class:`ModelSettings` and :class:`ServerSettings` is an option of the same name with the
field's docstring as its help, and a key of a ``--config`` file: a new setting needs no line here. Only
``--model`` (packages to serve besides the store), ``--config``, ``--ts_config``, ``--model_dir`` with
``--model_name`` (:func:`find_model_dir`) and jsonargparse's ``--print_config`` are the command's own.
``--ts_config`` reads TorchServe's ``config.properties`` (:mod:`torchship.serving.mar.properties`) into
the defaults of these options, so that every option given, on the command line or in a ``--config`` file,
wins over it (TorchServe: the command line over the file); the keys it does not honour are logged at
start, and printed to stderr with ``--print_config``. Paths in a config file are relative to the working
directory. Two shapes differ from jsonargparse's defaults, so
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser, Namespace  # type: ignore[attr-defined]

from torchship.dataclass_fields import SettingField, settings_fields
from torchship.errors import ConfigError, PackageError
from torchship.serving.mar.properties import TsConfig, read_ts_config
from torchship.serving.settings import ModelSettings, ServerSettings
from torchship.store.marker import verify_copied_version
from torchship.store.store import CONFIG_FILE, ModelStore

__all__ = [
    "MODEL_DIR_LAYOUTS",
    "ModelDir",
    "SettingField",
    "add_serve_arguments",
    "add_settings_arguments",
    "apply_ts_config",
    "find_model_dir",
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
    parser.add_argument(
        "--model_dir",
        type=str | None,
        default=None,
        metavar="DIR",
        help="A folder whose layout says what to serve, as KServe's storage initializer leaves /mnt/models: "
        "a package (config.json: served under --model_name), a store (<name>/<version>/config.json), or "
        "TorchServe's (model-store/ and config/config.properties: --model_store, --ts_config, --models all "
        "unless the file names models). Not read when --store is given",
    )
    parser.add_argument(
        "--model_name",
        type=str | None,
        default=None,
        metavar="NAME",
        help="The name a --model_dir package is served under (KServe's InferenceService name); None: "
        "the package's own. Stores and archives keep their names",
    )
    add_settings_arguments(parser, ModelSettings, "every model version")
    add_settings_arguments(parser, ServerSettings, "server")
    # The generated usage would list all ~50 options a second time.
    parser.usage = (
        "%(prog)s [--config FILE] [--ts_config FILE] [--store DIR] [--model [PACKAGE ...]] "
        "[--model_dir DIR [--model_name NAME]] [--SETTING VALUE ...]"
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
    if not any(arg.startswith(("--ts_config", "--config", "--model_dir")) for arg in args):
        return None  # no file could name one: no second parse
    printing = any(arg.startswith("--print_config") for arg in args)
    # A first pass without --print_config (which prints and exits) finds the file wherever it was given.
    first = parser.parse_args([arg for arg in args if not arg.startswith("--print_config")])
    from_dir = _model_dir_options(first["serve"])
    path = first["serve"].ts_config or from_dir.get("ts_config")
    if path is None:
        parser.set_defaults({f"serve.{name}": value for name, value in from_dir.items()})
        return None
    config = read_ts_config(Path(path), os.environ if environ is None else environ)
    if "model_store" in from_dir and "models" not in config.values:
        from_dir["models"] = ["all"]  # the folder holds what this server is for: every archive in it
    values = {name: _option_value(value) for name, value in config.values.items()}
    # The folder's own paths win over the file's (KServe's names /mnt/models/model-store, wherever it is).
    parser.set_defaults({f"serve.{name}": value for name, value in {**values, **from_dir}.items()})
    if printing:
        for key, why in config.not_honoured:
            print(f"warning: {config.path}: {key} is not honoured: {why}", file=sys.stderr)
        for key, why in config.not_needed:
            print(f"note: {config.path}: {key} is not needed: {why}", file=sys.stderr)
    return config


def _option_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


ModelDirLayout = Literal["package", "store", "torchserve"]

MODEL_DIR_LAYOUTS: dict[ModelDirLayout, str] = {
    "package": f"a torchship package ({CONFIG_FILE} at the top)",
    "store": f"a store (<name>/<version>/{CONFIG_FILE})",
    "torchserve": "TorchServe's layout (model-store/ with the .mar archives, config/config.properties)",
}
"""The layouts ``--model_dir`` serves, in the order it looks for them, with what marks each."""


@dataclass(frozen=True)
class ModelDir:
    """What :func:`find_model_dir` found in a ``--model_dir`` folder."""

    layout: ModelDirLayout
    path: Path
    ts_config: Path | None = None
    """TorchServe's layout: ``config/config.properties`` when the folder has one."""


def find_model_dir(path: Path) -> ModelDir:
    """The layout of ``path``, a folder as KServe's storage initializer leaves ``/mnt/models`` (see
    :data:`MODEL_DIR_LAYOUTS`); a missing folder or an unknown layout is a ConfigError that says what it
    found and what it expects (``find_model_dir(Path("/mnt/models")).layout == "torchserve"``, say)."""
    expected = "; ".join(MODEL_DIR_LAYOUTS.values())
    if not path.is_dir():
        what = "a file" if path.exists() else "nothing"
        raise ConfigError(
            f"--model_dir {path}: found {what} there; expected a folder holding {expected} "
            "(on KServe: give the InferenceService a storageUri, or give --store instead)"
        )
    if (path / CONFIG_FILE).is_file():
        try:  # a copy of an object store version: finished, and what was published
            verify_copied_version(path)
        except PackageError as exc:
            raise ConfigError(f"--model_dir {exc.message}") from None
        return ModelDir("package", path)
    if (path / "model-store").is_dir():
        config = path / "config" / "config.properties"
        return ModelDir("torchserve", path, config if config.is_file() else None)
    if ModelStore(path).models():
        return ModelDir("store", path)
    raise ConfigError(
        f"--model_dir {path} holds {_listing(path)}, none of the layouts it serves; expected {expected}"
    )


def _listing(path: Path, most: int = 8) -> str:
    """The first entries of ``path`` as a reader sees them (``a/``, ``b.txt``), or \"nothing\"."""
    entries = sorted(f"{entry.name}/" if entry.is_dir() else entry.name for entry in path.iterdir())
    if not entries:
        return "nothing"
    more = f" and {len(entries) - most} more" if len(entries) > most else ""
    return ", ".join(entries[:most]) + more


def _model_dir_options(cfg: Namespace) -> dict[str, Any]:
    """The options a ``--model_dir`` store or TorchServe layout stands for (a package is served by
    :func:`run_serve` itself, under ``--model_name``); none when ``--store`` is given."""
    if cfg.model_dir is None or cfg.store is not None:
        return {}
    found = find_model_dir(Path(cfg.model_dir))
    if found.layout == "store":
        return {"store": str(found.path)}
    if found.layout == "torchserve":
        options: dict[str, Any] = {"model_store": str(found.path / "model-store")}
        if found.ts_config is not None:
            options["ts_config"] = str(found.ts_config)
        else:
            options["models"] = ["all"]
        return options
    return {}


def run_serve(cfg: Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status. Raises ``TorchshipError`` for bad input."""
    from torchship.serving.runner import run
    from torchship.serving.server import Server
    from torchship.store import resolve_model

    packages: list[Path | tuple[Path, str]] = [resolve_model(ref) for ref in cfg.model]
    packages += _model_dir_packages(cfg)
    if cfg.store is None and not packages and cfg.model_store is None:
        raise ConfigError(
            "nothing to serve: give --store DIR (e.g. ./models), --model PACKAGE, --model_dir DIR, or "
            "TorchServe's --model_store DIR (also model_store in --ts_config)"
        )
    settings = serve_settings(cfg)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if _model_dir_overridden(cfg):
        logger.info("--model_dir %s is not read: --store %s is given", cfg.model_dir, cfg.store)
    if cfg.ts_config is not None:
        _log_ts_report(read_ts_config(Path(cfg.ts_config), os.environ))
    run(Server(settings, packages=packages))
    return 0


def _model_dir_packages(cfg: Namespace) -> list[Path | tuple[Path, str]]:
    """The ``--model_dir`` package, under ``--model_name`` when given. A store or TorchServe layout is
    served through the options :func:`apply_ts_config` made of it before parsing."""
    if cfg.model_dir is None or _model_dir_overridden(cfg):
        return []
    found = find_model_dir(Path(cfg.model_dir))
    if found.layout != "package":
        return []
    return [(found.path, cfg.model_name) if cfg.model_name else found.path]


def _model_dir_overridden(cfg: Namespace) -> bool:
    """Whether ``--store`` names a store other than ``--model_dir`` (which is then not read)."""
    return cfg.model_dir is not None and cfg.store is not None and Path(cfg.store) != Path(cfg.model_dir)


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
