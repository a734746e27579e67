import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer
from torch import Tensor

from torchship.errors import ConfigError, PackageError
from torchship.models import TransformerClassifier, load_pretrained, minilm_path

pytestmark = pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")

SENTENCE = "The quick brown fox jumps over the lazy dog."
SENTENCE_IDS = [101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 1012, 102]
# Mean over tokens of transformers' BertModel(all-MiniLM-L6-v2).last_hidden_state for SENTENCE, computed
# once with transformers 5.24 (not a dependency here): dims 0-7 and 100-103.
REFERENCE_HEAD = [0.23829, 0.319653, 0.261314, 0.420612, 0.145059, -0.204098, -0.01413, -0.325124]
REFERENCE_100 = [0.071124, 0.108531, 0.656831, 0.125332]
REFERENCE_NORM = 5.423881530761719


@pytest.fixture(scope="module")
def minilm() -> tuple[TransformerClassifier, Tokenizer]:
    torch.manual_seed(0)
    model, tokenizer = load_pretrained(minilm_path(), num_classes=4, max_length=256)
    return model.eval(), tokenizer


def mean_embedding(model: TransformerClassifier, input_ids: Tensor) -> Tensor:
    mask = torch.ones_like(input_ids, dtype=torch.bool)
    return model.encode(input_ids, mask).mean(dim=1)[0]


@pytest.mark.parametrize("path", ["sdpa", "fused", "regular"])
def test_minilm_reproduces_bert_hidden_states(
    minilm: tuple[TransformerClassifier, Tokenizer], path: str
) -> None:
    model, tokenizer = minilm
    ids = tokenizer.encode(SENTENCE).ids
    assert ids == SENTENCE_IDS
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(path != "regular")
    model.sdpa_inference = path == "sdpa"  # else the module: PyTorch's fused fast path, or its regular path
    try:
        with torch.inference_mode():
            embedding = mean_embedding(model, torch.tensor([ids]))
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
        del model.sdpa_inference  # back to the class default
    torch.testing.assert_close(embedding[:8], torch.tensor(REFERENCE_HEAD), atol=1e-4, rtol=0)
    torch.testing.assert_close(embedding[100:104], torch.tensor(REFERENCE_100), atol=1e-4, rtol=0)
    assert embedding.norm().item() == pytest.approx(REFERENCE_NORM, abs=1e-4)


def test_minilm_config_is_the_bert_flavour(minilm: tuple[TransformerClassifier, Tokenizer]) -> None:
    config = minilm[0].config
    assert (config.vocab_size, config.d_model, config.n_heads, config.n_layers) == (30522, 384, 12, 6)
    assert (config.positional, config.norm_first, config.activation) == ("learned", False, "gelu")
    assert config.embedding_norm and config.layer_norm_eps == 1e-12
    assert (config.num_classes, config.max_length) == (4, 256)
    assert minilm[0].position_embedding.weight.shape == (256, 384)


def test_minilm_tokenizer_truncates_and_does_not_pad(minilm: tuple[TransformerClassifier, Tokenizer]) -> None:
    tokenizer = minilm[1]
    assert len(tokenizer.encode("hello").ids) == 3  # [CLS] hello [SEP], not padded to 128
    assert len(tokenizer.encode("word " * 1000).ids) == 256


def test_head_is_fresh_and_seeded(tmp_path: Path) -> None:
    directory = write_tiny_bert(tmp_path)
    torch.manual_seed(1)
    first, _ = load_pretrained(directory, num_classes=3, max_length=16)
    torch.manual_seed(1)
    again, _ = load_pretrained(directory, num_classes=3, max_length=16)
    torch.manual_seed(2)
    other, _ = load_pretrained(directory, num_classes=3, max_length=16)
    assert first.head.weight.shape == (3, 8)
    torch.testing.assert_close(first.head.weight, again.head.weight)
    assert not torch.equal(first.head.weight, other.head.weight)


def test_key_prefixes_and_token_type_folding(tmp_path: Path) -> None:
    plain, _ = load_pretrained(write_tiny_bert(tmp_path / "plain"), num_classes=2, max_length=16)
    prefixed, _ = load_pretrained(write_tiny_bert(tmp_path / "bert", prefix="bert."), 2, max_length=16)
    weights = tiny_bert_weights()
    expected = (
        weights["embeddings.position_embeddings.weight"]
        + weights["embeddings.token_type_embeddings.weight"][0]
    )
    for model in (plain, prefixed):
        torch.testing.assert_close(model.position_embedding.weight, expected)
        layer = model.encoder.layers[0]
        torch.testing.assert_close(
            layer.self_attn.in_proj_weight[8:16], weights["encoder.layer.0.attention.self.key.weight"]
        )
        torch.testing.assert_close(layer.linear2.bias, weights["encoder.layer.0.output.dense.bias"])


def test_max_length_beyond_the_checkpoint_positions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"max_length.*16 positions"):
        load_pretrained(write_tiny_bert(tmp_path), num_classes=2, max_length=17)


def test_missing_directory_is_a_package_error(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"not a directory.*config\.json, model\.safetensors"):
        load_pretrained(tmp_path / "absent", num_classes=2)


@pytest.mark.parametrize("absent", ["config.json", "model.safetensors", "tokenizer.json"])
def test_missing_file_is_named(tmp_path: Path, absent: str) -> None:
    directory = write_tiny_bert(tmp_path)
    (directory / absent).unlink()
    with pytest.raises(PackageError, match=f"{absent}: missing"):
        load_pretrained(directory, num_classes=2, max_length=16)


def test_other_model_types_are_refused(tmp_path: Path) -> None:
    directory = write_tiny_bert(tmp_path, model_type="roberta")
    with pytest.raises(PackageError, match="model_type is 'roberta'"):
        load_pretrained(directory, num_classes=2, max_length=16)


def test_incomplete_weights_name_what_is_missing(tmp_path: Path) -> None:
    directory = write_tiny_bert(tmp_path)
    weights = tiny_bert_weights()
    del weights["encoder.layer.0.attention.self.query.weight"]
    save_file(weights, directory / "model.safetensors")
    with pytest.raises(PackageError, match=re.escape("lacks encoder.layer.0.attention.self.query.weight")):
        load_pretrained(directory, num_classes=2, max_length=16)


def test_pickled_weights_are_not_read(tmp_path: Path) -> None:
    directory = write_tiny_bert(tmp_path)
    torch.save(tiny_bert_weights(), directory / "model.safetensors")
    with pytest.raises(PackageError, match="not a readable safetensors file"):
        load_pretrained(directory, num_classes=2, max_length=16)


def test_minilm_path_points_at_a_bert_directory() -> None:
    assert json.loads((minilm_path() / "config.json").read_text())["model_type"] == "bert"


TINY = {"vocab_size": 30, "hidden_size": 8, "num_attention_heads": 2, "num_hidden_layers": 1}


def tiny_bert_weights() -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(0)
    shapes = {
        "embeddings.word_embeddings.weight": (30, 8),
        "embeddings.position_embeddings.weight": (16, 8),
        "embeddings.token_type_embeddings.weight": (2, 8),
        "embeddings.LayerNorm.weight": (8,),
        "embeddings.LayerNorm.bias": (8,),
    }
    for name, out_in in [
        ("attention.self.query", (8, 8)),
        ("attention.self.key", (8, 8)),
        ("attention.self.value", (8, 8)),
        ("attention.output.dense", (8, 8)),
        ("attention.output.LayerNorm", (8,)),
        ("intermediate.dense", (16, 8)),
        ("output.dense", (8, 16)),
        ("output.LayerNorm", (8,)),
    ]:
        shapes[f"encoder.layer.0.{name}.weight"] = out_in
        shapes[f"encoder.layer.0.{name}.bias"] = out_in[:1]
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def write_tiny_bert(directory: Path, *, prefix: str = "", model_type: str = "bert") -> Path:
    """A one-layer BERT checkpoint in Hugging Face layout, with MiniLM's tokenizer file."""
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        **TINY,
        "model_type": model_type,
        "intermediate_size": 16,
        "max_position_embeddings": 16,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
    }
    (directory / "config.json").write_text(json.dumps(config))
    save_file(
        {prefix + name: tensor for name, tensor in tiny_bert_weights().items()},
        directory / "model.safetensors",
    )
    shutil.copy(minilm_path() / "tokenizer.json", directory / "tokenizer.json")
    return directory
