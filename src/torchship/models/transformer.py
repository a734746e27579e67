"""A Transformer encoder that classifies token sequences: the model every torchship package holds.

Token and position embeddings feed PyTorch's ``nn.TransformerEncoder``; the encoder output is pooled
(masked mean over real tokens, or the first token) and a linear head turns it into logits.

    >>> config = TransformerConfig(vocab_size=1000, num_classes=3)
    >>> model = TransformerClassifier(config).eval()
    >>> input_ids = torch.tensor([[2, 17, 3, 0], [2, 5, 9, 3]])          # [CLS] ... [SEP], 0 pads
    >>> with torch.inference_mode():
    ...     logits = model(input_ids, attention_mask=input_ids != 0)
    >>> logits.shape
    torch.Size([2, 3])

Inference computes the encoder layers with ``F.scaled_dot_product_attention`` (:meth:`_encode_sdpa`: each
``nn.TransformerEncoderLayer``'s own weights, the same results) on the CPU and on CUDA GPUs, rather than
PyTorch's fused encoder fast path, because there it measured faster. The module is still kept in the shape
the fast path asks for (``batch_first``, one fused self-attention, relu/gelu, equal LayerNorm eps, an even
``n_heads``), so ``TransformerClassifier.sdpa_inference = False`` gives that path back: ``eval()`` with
gradients off then runs the fused ``_transformer_encoder_layer_fwd`` kernel, and post-norm encoders skip
the padding with nested tensors. Why not the fused kernel:

* **CPU.** Its attention materialises a masked softmax where SDPA has a flash-attention kernel, and the
  module re-checks some twenty fast-path conditions per layer in Python on every call: SDPA measured
  faster, most on long texts.
* **CUDA.** SDPA measured faster on short texts and as exact as a float64 run where the fused kernel was
  not; nested tensors win back some ground on large batches of long, padded texts.

The measurements are on the performance page of the docs ("Model inference").

Training (or any call with gradients on) always runs the module itself, and so does a model whose encoder
has forward hooks or was wrapped (FSDP, say), so that hooks and wrappers see the calls they expect; other
devices (``mps``) run the module too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torchship.dataclass_fields import reject_unknown_fields
from torchship.errors import ConfigError, UserInputError

__all__ = ["Activation", "Pooling", "Positional", "TransformerClassifier", "TransformerConfig"]

_SDPA_DEVICES = frozenset({"cpu", "cuda"})  # where inference runs _encode_sdpa (module docstring)

Pooling = Literal["mean", "cls"]
Positional = Literal["sinusoidal", "learned"]
Activation = Literal["relu", "gelu"]


@dataclass(frozen=True)
class TransformerConfig:
    """The architecture of a :class:`TransformerClassifier`; validated on construction."""

    vocab_size: int
    """Number of token ids the tokenizer can produce."""
    num_classes: int
    """Number of labels; the model returns one logit per label."""
    d_model: int = 128
    """Width of token representations; must be divisible by ``n_heads``."""
    n_heads: int = 4
    """Attention heads per layer (an even number keeps PyTorch's inference fast path)."""
    n_layers: int = 2
    """Number of encoder layers."""
    d_ff: int = 512
    """Hidden width of each layer's feed-forward block."""
    dropout: float = 0.1
    """Dropout on embeddings, attention, feed-forward and before the head, in ``[0, 1)``."""
    max_length: int = 512
    """Positions available; longer inputs are an error (the tokenizer truncates first)."""
    pooling: Pooling = "mean"
    """``"mean"`` averages the real tokens (padding never counts); ``"cls"`` takes position 0."""
    pad_id: int = 0
    """Token id used for padding; its embedding stays zero and gets no gradient."""
    positional: Positional = "sinusoidal"
    """Fixed sinusoidal positions (from scratch) or a learned table (BERT-family checkpoints)."""
    norm_first: bool = True
    """Pre-norm layers (stable from scratch) if True; post-norm (BERT) if False."""
    activation: Activation = "gelu"
    """Feed-forward activation."""
    embedding_norm: bool = False
    """LayerNorm over the summed embeddings before the encoder (BERT has one)."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm (BERT checkpoints use 1e-12)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "num_classes", "d_model", "n_heads", "n_layers", "d_ff", "max_length"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("pad_id", self.pad_id, minimum=0)
        if self.pad_id >= self.vocab_size:
            raise ConfigError(f"pad_id: must be below vocab_size ({self.vocab_size}), got {self.pad_id}")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model: must be divisible by n_heads ({self.n_heads}), got {self.d_model}")
        _check_float("dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        _check_float("layer_norm_eps", self.layer_norm_eps)
        if not self.layer_norm_eps > 0.0:
            raise ConfigError(f"layer_norm_eps: must be positive, got {self.layer_norm_eps}")
        _check_choice("pooling", self.pooling, get_args(Pooling))
        _check_choice("positional", self.positional, get_args(Positional))
        _check_choice("activation", self.activation, get_args(Activation))
        for name in ("norm_first", "embedding_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected true or false, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values, field by field; :meth:`from_dict` reads them back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransformerConfig:
        """Build a config from :meth:`to_dict` output; ConfigError names unknown or missing fields."""
        reject_unknown_fields(cls, data, where="model config")
        missing = [name for name in ("vocab_size", "num_classes") if name not in data]
        if missing:
            raise ConfigError(f"model config: missing field(s) {', '.join(missing)}")
        return cls(**data)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    # bool is an int subclass; `n_layers: true` in a JSON file is a mistake, not 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name}: expected an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")


def _check_float(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got {value!r}")


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


class SinusoidalEmbedding(nn.Module):
    """The fixed sin/cos position table of "Attention Is All You Need", exposed like ``nn.Embedding``.

    The table is a non-persistent buffer: it is rebuilt from the config, so checkpoints do not carry it.
    """

    weight: Tensor

    def __init__(self, num_positions: int, dim: int) -> None:
        super().__init__()
        position = torch.arange(num_positions, dtype=torch.float32).unsqueeze(1)  # (L, 1)
        frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
        table = torch.zeros(num_positions, dim)  # (L, C)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency[: dim // 2])  # an odd dim has one cos column less
        self.register_buffer("weight", table, persistent=False)


class TransformerClassifier(nn.Module):
    """Embeddings, ``nn.TransformerEncoder``, pooling and a linear head: token ids in, logits out."""

    sdpa_inference = True
    """Inference on a CPU or CUDA GPU through :meth:`_encode_sdpa` (see the module docstring); False runs
    the module, and so PyTorch's fused fast path. Set it on the class or on one model."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_id)
        self.position_embedding: nn.Embedding | SinusoidalEmbedding
        if c.positional == "learned":
            self.position_embedding = nn.Embedding(c.max_length, c.d_model)
        else:
            self.position_embedding = SinusoidalEmbedding(c.max_length, c.d_model)
        # Sinusoids have a fixed amplitude of 1, so token embeddings are scaled to unit size to match
        # (Vaswani et al.); learned tables share one scale and are added as they are (BERT).
        self.embedding_scale = math.sqrt(c.d_model) if c.positional == "sinusoidal" else 1.0
        self.embedding_norm = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.embedding_norm else None
        self.dropout = nn.Dropout(c.dropout)

        layer = nn.TransformerEncoderLayer(
            c.d_model,
            c.n_heads,
            dim_feedforward=c.d_ff,
            dropout=c.dropout,
            activation=c.activation,
            layer_norm_eps=c.layer_norm_eps,
            batch_first=True,
            norm_first=c.norm_first,
        )
        self.encoder = nn.TransformerEncoder(
            layer,
            c.n_layers,
            # Pre-norm layers leave the residual stream un-normalised; post-norm layers end in a norm.
            norm=nn.LayerNorm(c.d_model, eps=c.layer_norm_eps) if c.norm_first else None,
            # Nested tensors skip the padding inside the encoder; PyTorch supports them for post-norm
            # layers with an even head count only, and warns if asked otherwise.
            enable_nested_tensor=not c.norm_first and c.n_heads % 2 == 0,
        )
        self.head_dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(c.d_model, c.num_classes)
        self._init_weights()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for ``input_ids`` ``(B, T)``; ``attention_mask`` is True/1 on tokens.

        Padding may follow the real tokens in any amount: it changes neither attention nor pooling.
        """
        is_token = attention_mask.bool()  # (B, T)
        pooled = self._pool(self.encode(input_ids, is_token), is_token)  # (B, C)
        logits: Tensor = self.head(self.head_dropout(pooled))  # (B, num_classes)
        return logits

    def encode(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The encoder's output ``(B, T, C)`` before pooling; values at padded positions are meaningless."""
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise UserInputError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                "must both be (batch, tokens)"
            )
        seq_len = input_ids.size(1)
        if seq_len > self.config.max_length:
            raise UserInputError(
                f"input has {seq_len} tokens but the model takes at most {self.config.max_length}; "
                "truncate with the model's tokenizer"
            )
        x: Tensor = self.token_embedding(input_ids) * self.embedding_scale  # (B, T, C)
        x = x + self.position_embedding.weight[:seq_len]  # (B, T, C) + (T, C)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.dropout(x)
        padding = ~attention_mask.bool()  # (B, T) True on padding
        if self._sdpa_applies(x):
            return self._encode_sdpa(x, padding)
        hidden: Tensor = self.encoder(x, src_key_padding_mask=padding)  # (B, T, C)
        return hidden

    def _sdpa_applies(self, x: Tensor) -> bool:
        """True for inference on a CPU or CUDA GPU through plain encoder layers without hooks (module
        docstring)."""
        encoder = self.encoder
        if not self.sdpa_inference or x.device.type not in _SDPA_DEVICES or torch.is_grad_enabled():
            return False
        if encoder.training:
            return False
        # Hooks matter on the modules this path does not call: the encoder, its layers, their attention,
        # its output projection and the dropouts (the norms and feed-forward linears are called, hooks
        # and all).
        bypassed: list[nn.Module] = [encoder]
        for layer in encoder.layers:
            if type(layer) is not nn.TransformerEncoderLayer or layer.training:
                return False
            bypassed += (
                layer,
                layer.self_attn,
                layer.self_attn.out_proj,
                layer.dropout,
                layer.dropout1,
                layer.dropout2,
            )
        return not any(module._forward_hooks or module._forward_pre_hooks for module in bypassed)

    def _encode_sdpa(self, x: Tensor, padding: Tensor) -> Tensor:
        """What each ``nn.TransformerEncoderLayer`` computes in eval mode, with its own weights, attention
        by ``F.scaled_dot_product_attention``. Dropout is left out: it is the identity in eval mode."""
        attend = ~padding[:, None, None, :]  # (B, 1, 1, T): every query may attend to every real token
        for layer in self.encoder.layers:
            if layer.norm_first:
                x = x + _self_attention(layer.self_attn, layer.norm1(x), attend)
                x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
            else:
                x = layer.norm1(x + _self_attention(layer.self_attn, x, attend))
                x = layer.norm2(x + layer.linear2(layer.activation(layer.linear1(x))))
        return self.encoder.norm(x) if self.encoder.norm is not None else x  # (B, T, C)

    def _pool(self, x: Tensor, is_token: Tensor) -> Tensor:
        if self.config.pooling == "cls":
            return x[:, 0]  # (B, C)
        # masked_fill rather than a multiply: padded positions may hold NaN on some paths (a query with
        # nothing to attend to), and NaN * 0 is still NaN.
        summed = x.masked_fill(~is_token.unsqueeze(-1), 0.0).sum(dim=1)  # (B, T, C) -> (B, C)
        count = is_token.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
        return summed / count

    def _init_weights(self) -> None:
        # nn.TransformerEncoder deep-copies one layer, so every layer would start identical; re-draw all
        # weights GPT-2/BERT style, with residual projections scaled down by depth.
        std = 0.02
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_residual = name.endswith(("self_attn.out_proj", "linear2"))
                nn.init.normal_(module.weight, std=residual_std if is_residual else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.normal_(module.in_proj_weight, std=std)
                nn.init.zeros_(module.in_proj_bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
        if self.config.positional == "sinusoidal":
            # forward multiplies by sqrt(d_model): unit-size token vectors next to unit-amplitude sinusoids.
            nn.init.normal_(self.token_embedding.weight, std=1.0 / self.embedding_scale)
        with torch.no_grad():
            self.token_embedding.weight[self.config.pad_id].zero_()


def _self_attention(attention: nn.MultiheadAttention, x: Tensor, attend: Tensor) -> Tensor:
    """``attention(x, x, x)`` for a batch-first ``nn.MultiheadAttention`` with one fused input projection;
    ``attend`` (B, 1, 1, T) is True on the keys each query may attend to."""
    batch, tokens, width = x.shape
    heads = attention.num_heads
    qkv = F.linear(x, attention.in_proj_weight, attention.in_proj_bias)  # (B, T, 3C)
    q, k, v = qkv.view(batch, tokens, 3, heads, width // heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, D)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)  # (B, H, T, D)
    out = out.transpose(1, 2).reshape(batch, tokens, width)  # (B, T, C)
    return F.linear(out, attention.out_proj.weight, attention.out_proj.bias)
