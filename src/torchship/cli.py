"""The ``torchship`` command: train, evaluate, predict, serve and list models.

    torchship train --data bbc-news --store ./models --name bbc --trainer.max_epochs 12
    torchship train --config run.yaml --trainer.accelerator gpu --trainer.devices 1
    torchship predict --model ./models/bbc "Shares rose after the results." --json
    torchship evaluate --model ./models/bbc:2 --data held_out.csv
    torchship models --store ./models
    torchship models --store s3://bucket/models      # an object store (pip install 'torchship[s3]')
    torchship serve --store ./models
    torchship serve --ts_config config.properties --model_store ./model-store --models all
    torchship torchserve --start --model-store=./model-store --ts-config=config.properties
    torchship key management        # a key of the running server, from its key file

Arguments come from the typed signatures (jsonargparse): ``--model.*`` from :class:`ModelOptions`,
``--optim.*`` from :class:`OptimOptions`, the data options from :class:`DataConfig` and ``--trainer.*``
from ``lightning.Trainer`` itself, so ``Trainer(gpus=1)`` becomes
``--trainer.accelerator gpu --trainer.devices 1``.
Every user error ends as ``error: <message>`` on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from argparse import ArgumentError
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jsonargparse import ActionConfigFile, ArgumentParser, Namespace  # type: ignore[attr-defined]

from torchship._version import __version__
from torchship.errors import DataError, NotFoundError, TorchshipError

if TYPE_CHECKING:
    from torchship.store import ModelPackage, ModelStore, ObjectStore

__all__ = ["build_parser", "main"]

# Trainer arguments that take Python objects: they stay in code, not on the command line.
_TRAINER_SKIP = {"callbacks", "logger", "plugins", "enable_checkpointing"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["torchserve"]:  # TorchServe's flags (--model-store=DIR), not jsonargparse's
            from torchship.serving.torchserve_command import run_torchserve

            return run_torchserve(args[1:], main)
        only = args[0] if args[:1] in (["serve"], ["key"]) else None
        parser = build_parser(only="key" if args == ["--version"] else only)  # --version: no Lightning
        if only == "serve":
            from torchship.serving.command import apply_ts_config

            apply_ts_config(parser, args)
        cfg = parser.parse_args(args)
        return _COMMANDS[cfg.command](cfg[cfg.command])
    except TorchshipError as exc:
        return _fail(exc.message)
    except ArgumentError as exc:
        # jsonargparse's messages can span lines ("Parser key ...:\n  Expected ..."); one line reads better.
        message = _argument_message(" ".join(str(exc).split()))
        return _fail(f"{message} (see `torchship {args[0] if args else ''} --help`)".replace("  ", " "))
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        return _fail("interrupted", status=130)


_PARSER_KEY = re.compile(r'^Parser key "([^"]+)": ')
_EXPECTED = re.compile(r"Expected a <class '(?:[\w.]+\.)?(\w+)'>")
_GIVEN = re.compile(r"(?:Got value|Given value): (.*)$")
_TYPE_WORDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}


def _argument_message(message: str) -> str:
    """jsonargparse's type errors in words (``workers: expected an integer or null, got 'many'``); any
    other message as it is."""
    if "object does not support item assignment" in message:  # jsonargparse on a scalar for nargs="*"
        return (
            "an option that takes several values got one value in the config file: write it as a YAML "
            "list (cors_allowed_origins: [https://a.example])"
        )
    key, given = _PARSER_KEY.match(message), _GIVEN.search(message)
    expected = _EXPECTED.findall(message)
    if key is None or given is None or not expected:
        return message
    words = dict.fromkeys("null" if name == "NoneType" else _TYPE_WORDS.get(name, name) for name in expected)
    return f"{key.group(1)}: expected {' or '.join(words)}, got {given.group(1)!r}"


def build_parser(*, only: str | None = None) -> ArgumentParser:
    """The ``torchship`` parser, with every subcommand, or with ``only`` that one.

    ``torchship serve`` (and ``key``) builds only its own subcommand: the train parser imports Lightning,
    and the serving process never should."""
    parser = ArgumentParser(
        prog="torchship",
        description="From data to a served model: train, evaluate, predict, serve.",
        exit_on_error=False,
        version=__version__,
    )
    commands = parser.add_subcommands(dest="command")
    builders: dict[str, tuple[Callable[[], ArgumentParser], str]] = {
        "train": (_train_parser, "Train a classifier and publish it to a store"),
        "predict": (_predict_parser, "Classify texts with a model package"),
        "evaluate": (_evaluate_parser, "Score a model package on labelled data"),
        "models": (_models_parser, "List the models and versions in a store"),
        "serve": (lambda: _serve_parser(load=only == "serve"), "Serve a store over HTTP"),
        "key": (_key_parser, "Print a key of a running server (from its key file)"),
        "torchserve": (
            _torchserve_parser,
            "TorchServe's command line (torchserve --start ...), served by torchship serve",
        ),
    }
    for name, (build, help_text) in builders.items():
        if only is None or only == name:
            commands.add_subcommand(name, build(), help=help_text)
    return parser


def _subparser(description: str) -> ArgumentParser:
    return ArgumentParser(description=description, exit_on_error=False)


def _train_parser() -> ArgumentParser:
    import lightning as L

    from torchship.data.datamodule import DataConfig
    from torchship.training.options import ModelOptions, OptimOptions
    from torchship.training.run import TRAINER_DEFAULTS

    parser = _subparser("Train a text classifier with Lightning and publish the best checkpoint.")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options")
    parser.add_class_arguments(DataConfig, None, instantiate=False)
    parser.add_argument(
        "--store",
        type=str,
        default="./models",
        help="Model store to publish to: a directory, or an object store URL (s3://bucket/prefix)",
    )
    parser.add_argument("--name", type=str, required=True, help="Model name in the store")
    parser.add_argument("--version", type=int | None, default=None, help="Explicit version (must be new)")
    parser.add_argument(
        "--ckpt_path", type=str | None, default=None, help="Resume from this checkpoint, or 'last'"
    )
    parser.add_argument(
        "--monitor", type=str, default="val_macro_f1", help="val_macro_f1, val_accuracy or val_loss"
    )
    parser.add_argument("--early_stopping_patience", type=int | None, default=None)
    parser.add_class_arguments(ModelOptions, "model", instantiate=False)
    parser.add_class_arguments(OptimOptions, "optim", instantiate=False)
    parser.add_class_arguments(L.Trainer, "trainer", skip=_TRAINER_SKIP, instantiate=False)
    parser.set_defaults({f"trainer.{key}": value for key, value in TRAINER_DEFAULTS.items()})
    return parser


def _predict_parser() -> ArgumentParser:
    parser = _subparser("Classify texts with a model package, run exactly as the server runs it.")
    parser.add_argument("--model", type=str, required=True, help="<store>/<name>[:VERSION] or a package dir")
    parser.add_argument("texts", type=str, nargs="*", help="Texts; none reads one per line from stdin")
    parser.add_argument("--json", action="store_true", help="Print JSON")
    _add_device_argument(parser)
    return parser


def _evaluate_parser() -> ArgumentParser:
    parser = _subparser("Accuracy, macro-F1 and per-class figures of a model package on labelled data.")
    parser.add_argument("--model", type=str, required=True, help="<store>/<name>[:VERSION] or a package dir")
    parser.add_argument("--data", type=str, required=True, help="CSV/JSONL/Parquet file or class folders")
    parser.add_argument("--text_column", type=str, default="text")
    parser.add_argument("--label_column", type=str, default="label")
    parser.add_argument(
        "--batch_size",
        type=int | None,
        default=None,
        help="At most this many texts (or windows) per forward call; by default grouped as the server does",
    )
    parser.add_argument("--json", action="store_true", help="Print JSON")
    _add_device_argument(parser)
    return parser


def _add_device_argument(parser: ArgumentParser) -> None:
    parser.add_argument(
        "--device", type=str, default="auto", help="auto (a GPU if torch sees one), cpu, cuda, cuda:N, mps"
    )


def _models_parser() -> ArgumentParser:
    parser = _subparser("List the models in a store, their versions and test scores.")
    parser.add_argument(
        "--store",
        type=str,
        default="./models",
        help="Model store: a directory, or an object store URL (s3://bucket/prefix)",
    )
    parser.add_argument("--json", action="store_true", help="Print JSON")
    return parser


def _serve_parser(*, load: bool) -> ArgumentParser:
    parser = _subparser("Serve the models of a store over HTTP (TorchServe and Open Inference v2 APIs).")
    if load:
        from torchship.serving.command import add_serve_arguments

        add_serve_arguments(parser)
    return parser


def _torchserve_parser() -> ArgumentParser:
    # Only listed here: main() hands `torchship torchserve ...` to its own parser before this one runs.
    return _subparser("TorchServe's command line; see `torchship torchserve --help`.")


def _key_parser() -> ArgumentParser:
    parser = _subparser(
        "Print one key of a running server from its key file, for an Authorization header: "
        'curl -H "Authorization: Bearer $(torchship key management)" http://127.0.0.1:8081/models'
    )
    parser.add_argument("kind", type=str, help="management, inference or API")
    parser.add_argument("--key_file", type=str, default="key_file.json", help="The server's --key_file")
    return parser


def _key(cfg: Namespace) -> int:
    import time

    from torchship.serving.http.auth import ENVIRONMENT, KEY_KINDS, read_key_file

    kinds = {kind.lower(): kind for kind in KEY_KINDS}
    kind = kinds.get(cfg.kind.lower())
    if kind is None:
        raise DataError(f"unknown key {cfg.kind!r}; choose one of {', '.join(KEY_KINDS)}")
    path = Path(cfg.key_file)
    if not path.exists():
        raise DataError(
            f"no key file at {path}: a server writes it when it starts (in its working directory, or where "
            "its --key_file says); pass that path with --key_file"
        )
    key = read_key_file(path).get(kind)
    if key is None:
        raise DataError(f"{path} has no {kind} key: the server took it from ${ENVIRONMENT[kind]}")
    if key.expires_at is not None and key.expires_at <= time.time():
        print(f"warning: the {kind} key has expired; GET /token?type={kind} makes a new one", file=sys.stderr)
    print(key.value)
    return 0


def _train(cfg: Namespace) -> int:
    from torchship.data.datamodule import DataConfig
    from torchship.training.options import ModelOptions, OptimOptions
    from torchship.training.run import train

    data_fields = inspect.signature(DataConfig).parameters
    result = train(
        DataConfig(**{key: cfg[key] for key in data_fields}),
        store=cfg.store,
        name=cfg.name,
        model=ModelOptions(**cfg.model.as_dict()),
        optim=OptimOptions(**cfg.optim.as_dict()),
        trainer=_changed_trainer_options(cfg.trainer.as_dict()),
        monitor=cfg.monitor,
        early_stopping_patience=cfg.early_stopping_patience,
        ckpt_path=cfg.ckpt_path,
        version=cfg.version,
    )
    if result.version is None:  # a DDP worker process: rank 0 reports
        return 0
    metrics = result.metrics
    print(f"published {result.name} version {result.version} at {result.location}")
    for split in ("validation", "test"):
        if metrics.get(split):
            scores = metrics[split]
            print(f"{split:>10}: accuracy {scores['accuracy']:.4f}  macro-F1 {scores['macro_f1']:.4f}")
    print(f"training time: {metrics['train_time_s']:.1f} s")
    return 0


def _changed_trainer_options(options: dict[str, Any]) -> dict[str, Any]:
    # Hand over what differs from Lightning's own defaults: the run records exactly what was chosen.
    import lightning as L

    defaults = {name: p.default for name, p in inspect.signature(L.Trainer.__init__).parameters.items()}
    return {key: value for key, value in options.items() if key not in defaults or value != defaults[key]}


def _on_device(package: ModelPackage, device: str) -> ModelPackage:
    """Move ``package``'s model to ``device`` (checked and resolved as the server does)."""
    from torchship.devices import check_device, resolve_device

    package.model.to(resolve_device(check_device(device, "--device")))
    return package


def _predict(cfg: Namespace) -> int:
    from torchship.store import load_package, resolve_model

    texts = list(cfg.texts) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise DataError("no texts to classify: pass them as arguments or one per line on stdin")
    package = _on_device(load_package(resolve_model(cfg.model)), cfg.device)
    probabilities = package.predict_proba(texts)
    results = [
        {
            "text": text,
            "label": package.labels[int(row.argmax())],
            "probabilities": {label: float(p) for label, p in zip(package.labels, row.tolist(), strict=True)},
        }
        for text, row in zip(texts, probabilities, strict=True)
    ]
    if cfg.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        ranked = sorted(result["probabilities"].items(), key=lambda item: -item[1])
        print(f"{result['label']}\t{_shorten(result['text'])}")
        print("  " + "  ".join(f"{label} {p:.4f}" for label, p in ranked))
    return 0


def _evaluate(cfg: Namespace) -> int:
    import torch

    from torchship.data.formats import read_examples
    from torchship.store import load_package, resolve_model
    from torchship.training.metrics import ClassificationMetrics

    path = resolve_model(cfg.model)
    package = _on_device(load_package(path), cfg.device)
    examples = read_examples(cfg.data, text_column=cfg.text_column, label_column=cfg.label_column)
    index = {label: i for i, label in enumerate(package.labels)}
    unknown = sorted({example.label for example in examples} - set(index))
    if unknown:
        raise DataError(
            f"{cfg.data}: label(s) {', '.join(map(repr, unknown))} are not labels of the model "
            f"({', '.join(package.labels)}); check --label_column or the model"
        )
    probabilities = package.predict_proba([example.text for example in examples], batch_size=cfg.batch_size)
    target = torch.tensor([index[example.label] for example in examples])
    metrics = ClassificationMetrics(package.labels, sync=False)
    loss = torch.nn.functional.nll_loss(probabilities.clamp_min(1e-12).log(), target)
    metrics.update(probabilities, target, loss)
    report = {"model": str(path), "data": cfg.data, "examples": len(examples), **metrics.report()}
    if cfg.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model {path}, data {cfg.data}: {len(examples)} texts")
    for key, title in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("loss", "loss")):
        print(f"{title:<9} {report[key]:.4f}")
    width = max(len("label"), *(len(label) for label in package.labels))
    print(f"\n{'label':<{width}}  precision  recall      f1  support")
    for label, scores in report["per_class"].items():
        print(
            f"{label:<{width}}  {scores['precision']:9.4f}  {scores['recall']:6.4f}  {scores['f1']:6.4f}"
            f"  {scores['support']:7d}"
        )
    return 0


def _models(cfg: Namespace) -> int:
    from torchship.store import ModelStore, open_store

    store = open_store(cfg.store)
    rows = [
        {
            "name": name,
            "version": version,
            **(
                _scores(store.path(name, version))
                if isinstance(store, ModelStore)
                else _remote_scores(store, name, version)
            ),
        }
        for name, versions in _listing(store).items()
        for version in versions
    ]
    if cfg.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no models in {cfg.store}")
        return 0
    print(f"{'name':<20} {'version':>7} {'test accuracy':>13} {'test macro-F1':>13}  created")
    for row in rows:
        accuracy, f1 = (
            f"{row[key]:.4f}" if row[key] is not None else "-" for key in ("accuracy", "macro_f1")
        )
        print(f"{row['name']:<20} {row['version']:>7} {accuracy:>13} {f1:>13}  {row['created']}")
    return 0


def _scores(path: Path) -> dict[str, Any]:
    from torchship.store import read_config

    try:
        test = json.loads((path / "metrics.json").read_text(encoding="utf-8")).get("test") or {}
    except (OSError, ValueError):
        test = {}
    return {
        "accuracy": test.get("accuracy"),
        "macro_f1": test.get("macro_f1"),
        "created": read_config(path).created,
    }


def _listing(store: ModelStore | ObjectStore) -> dict[str, list[int]]:
    from torchship.store import ModelStore

    if isinstance(store, ModelStore):
        return {name: store.versions(name) for name in store.models()}
    return store.listing()  # one listing of the bucket, not one per model


def _remote_scores(store: ObjectStore, name: str, version: int) -> dict[str, Any]:
    try:
        test = json.loads(store.read_file(name, version, "metrics.json")).get("test") or {}
    except (NotFoundError, ValueError):
        test = {}
    config = json.loads(store.read_file(name, version, "config.json"))
    return {
        "accuracy": test.get("accuracy"),
        "macro_f1": test.get("macro_f1"),
        "created": config.get("created"),
    }


def _serve(cfg: Namespace) -> int:
    from torchship.serving.command import run_serve

    status: int = run_serve(cfg)
    return status


def _shorten(text: str, width: int = 70) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _fail(message: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


_COMMANDS: dict[str, Callable[[Namespace], int]] = {
    "train": _train,
    "predict": _predict,
    "evaluate": _evaluate,
    "models": _models,
    "serve": _serve,
    "key": _key,
}


if __name__ == "__main__":
    sys.exit(main())
