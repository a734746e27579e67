import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import Tensor
from torch.profiler import ProfilerActivity, profile

from torchship.errors import ConfigError, UserInputError
from torchship.models import TransformerClassifier, TransformerConfig

# PyTorch warns once per process that its (strided) nested tensors are a prototype.
pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")

SMALL = {"vocab_size": 50, "num_classes": 3, "d_model": 32, "n_heads": 4, "n_layers": 2, "d_ff": 64}
# The two flavours: from scratch (defaults) and the BERT form load_pretrained builds.
FLAVOURS = {
    "pre-norm": {},
    "post-norm": {
        "positional": "learned",
        "norm_first": False,
        "embedding_norm": True,
        "layer_norm_eps": 1e-12,
    },
}
FUSED_LAYER_OP = "aten::_transformer_encoder_layer_fwd"
SDPA_OP = "aten::scaled_dot_product_attention"


def make_model(seed: int = 0, **overrides: object) -> TransformerClassifier:
    torch.manual_seed(seed)
    config = TransformerConfig(**{**SMALL, **overrides})  # type: ignore[arg-type]
    return TransformerClassifier(config).eval()


def pad(sequences: list[list[int]], width: int, filler: int = 0) -> tuple[Tensor, Tensor]:
    input_ids = torch.full((len(sequences), width), filler)
    attention_mask = torch.zeros(len(sequences), width, dtype=torch.bool)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = True
    return input_ids, attention_mask


@contextmanager
def fast_path(enabled: bool) -> Iterator[None]:
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def ops_run(fn: Callable[[], object]) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.name for event in prof.events()}


GRAD_MODES = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}


@pytest.mark.parametrize("grad_mode", GRAD_MODES)
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_logits_ignore_padding_and_batch_mates(pooling: str, flavour: str, grad_mode: str) -> None:
    model = make_model(pooling=pooling, **FLAVOURS[flavour])
    target = [2, 7, 11, 13, 3]
    others = [[2, 5, 3], [2, *range(10, 30), 3]]
    with GRAD_MODES[grad_mode]():
        alone = model(*pad([target], len(target)))
        padded = model(*pad([target], 12))
        # Padded positions hold arbitrary ids: the mask alone decides what is a token.
        noisy = model(*pad([target], 12, filler=42))
        in_batch = model(*pad([others[0], target, others[1]], 22))[1:2]
    for logits in (padded, noisy, in_batch):
        torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)


def test_integer_mask_gives_the_same_logits_as_a_bool_mask() -> None:
    model = make_model()
    input_ids, attention_mask = pad([[2, 8, 9, 3], [2, 3]], 4)
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids, attention_mask.long()), model(input_ids, attention_mask))


CUDA = pytest.param(
    "cuda",
    marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
)


@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_inference_runs_sdpa_and_gives_the_fused_fast_paths_logits(flavour: str, device: str) -> None:
    model = make_model(**FLAVOURS[flavour]).to(device)
    batch = tuple(tensor.to(device) for tensor in pad([[2, 7, 11, 13, 3], [2, 5, 3]], 5))
    with torch.inference_mode():
        exact = make_model(**FLAVOURS[flavour]).double()(*(tensor.cpu() for tensor in batch))
        sdpa_ops = ops_run(lambda: model(*batch))
        sdpa = model(*batch)
        model.sdpa_inference = False  # the module itself: PyTorch's fused fast path
        fused_ops = ops_run(lambda: model(*batch))
        fused = model(*batch)
        with fast_path(False):
            # Negative control: the same probe must not see the fused op when the fast path is off.
            regular_ops = ops_run(lambda: model(*batch))
            regular = model(*batch)
    assert SDPA_OP in sdpa_ops
    assert FUSED_LAYER_OP not in sdpa_ops
    assert FUSED_LAYER_OP in fused_ops
    assert FUSED_LAYER_OP not in regular_ops
    if flavour == "post-norm":  # nested tensors skip the padding; PyTorch allows them for post-norm only
        assert "aten::_nested_tensor_from_mask" in fused_ops
    # The fused kernel on a GPU is the least exact of the three (4.7e-4 on the demo model; see the module).
    for logits, tolerance in ((sdpa, 1e-5), (regular, 1e-5), (fused, 1e-5 if device == "cpu" else 1e-3)):
        torch.testing.assert_close(logits.cpu().double(), exact, atol=tolerance, rtol=0)


@pytest.mark.parametrize("hooked", ["layer", "attention", "dropout"])
def test_forward_hooks_on_the_encoder_see_every_inference_call(hooked: str) -> None:
    model = make_model()
    layer = model.encoder.layers[1]
    module = {"layer": layer, "attention": layer.self_attn, "dropout": layer.dropout1}[hooked]
    seen: list[int] = []
    module.register_forward_hook(lambda module, args, output: seen.append(len(args)))
    with torch.inference_mode():
        model(*pad([[2, 7, 3], [2, 3]], 3))
    assert len(seen) == 1  # the module ran, so its hook did


def test_training_mode_takes_the_differentiable_path() -> None:
    model = make_model().train()
    assert FUSED_LAYER_OP not in ops_run(lambda: model(*pad([[2, 7, 3]], 3)))


def test_a_few_adamw_steps_learn_whether_token_5_appears() -> None:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(6, 50, (64, 10), generator=generator)
    labels = torch.randint(0, 2, (64,), generator=generator)
    positions = torch.randint(1, 10, (64,), generator=generator)
    input_ids[labels == 1, positions[labels == 1]] = 5
    attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    model = make_model(num_classes=2, dropout=0.0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(model(input_ids, attention_mask), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.6
    assert losses[-1] < 0.2 * losses[0]


def test_inputs_longer_than_max_length_are_refused() -> None:
    model = make_model(max_length=8)
    with pytest.raises(UserInputError, match="at most 8"):
        model(*pad([list(range(1, 10))], 9))


def test_mismatched_mask_is_refused() -> None:
    model = make_model()
    with pytest.raises(UserInputError, match="attention_mask"):
        model(torch.ones(2, 5, dtype=torch.long), torch.ones(2, 4, dtype=torch.bool))


def test_state_dict_names_are_stable() -> None:
    # Packages store these names in model.safetensors; renaming one breaks every published package.
    names = set(make_model(n_layers=1).state_dict())
    layer = {
        f"encoder.layers.0.{name}"
        for name in (
            "self_attn.in_proj_weight",
            "self_attn.in_proj_bias",
            "self_attn.out_proj.weight",
            "self_attn.out_proj.bias",
            "linear1.weight",
            "linear1.bias",
            "linear2.weight",
            "linear2.bias",
            "norm1.weight",
            "norm1.bias",
            "norm2.weight",
            "norm2.bias",
        )
    }
    head = {"token_embedding.weight", "encoder.norm.weight", "encoder.norm.bias", "head.weight", "head.bias"}
    assert names == layer | head  # sinusoidal positions are rebuilt, not stored
    learned = set(make_model(n_layers=1, **FLAVOURS["post-norm"]).state_dict())
    extra = {"position_embedding.weight", "embedding_norm.weight", "embedding_norm.bias"}
    assert learned == (names - {"encoder.norm.weight", "encoder.norm.bias"}) | extra


def test_layers_start_from_different_weights() -> None:
    layers = make_model().encoder.layers
    assert not torch.equal(layers[0].linear1.weight, layers[1].linear1.weight)


def test_padding_embedding_is_zero() -> None:
    model = make_model(pad_id=1)
    torch.testing.assert_close(model.token_embedding.weight[1], torch.zeros(32))


def test_config_round_trips_through_dict_and_json() -> None:
    config = TransformerConfig(**SMALL, pooling="cls", **FLAVOURS["post-norm"])  # type: ignore[arg-type]
    assert TransformerConfig.from_dict(config.to_dict()) == config
    assert TransformerConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_is_frozen() -> None:
    config = TransformerConfig(vocab_size=10, num_classes=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_model = 64  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"d_model": 30}, "d_model"),
        ({"n_heads": 0}, "n_heads"),
        ({"n_layers": 0}, "n_layers"),
        ({"vocab_size": -1}, "vocab_size"),
        ({"d_ff": "64"}, "d_ff"),
        ({"max_length": True}, "max_length"),
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"pooling": "max"}, "pooling"),
        ({"positional": "rope"}, "positional"),
        ({"activation": "swish"}, "activation"),
        ({"pad_id": 50}, "pad_id"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
        ({"norm_first": "yes"}, "norm_first"),
    ],
)
def test_invalid_config_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        TransformerConfig(**{**SMALL, **overrides})  # type: ignore[arg-type]


def test_from_dict_names_unknown_and_missing_fields() -> None:
    with pytest.raises(ConfigError, match=r"unknown field.*n_head\b"):
        TransformerConfig.from_dict({**SMALL, "n_head": 4})
    with pytest.raises(ConfigError, match=r"missing field.*num_classes"):
        TransformerConfig.from_dict({"vocab_size": 10})
