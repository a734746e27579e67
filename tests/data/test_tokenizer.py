"""Training, configuring and applying tokenizers: special ids, determinism, truncation, no padding."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys

import pytest
import torch
from tokenizers import Tokenizer, models

from torchship.data.tokenizer import (
    SPECIAL_TOKENS,
    configure_tokenizer,
    encode_texts,
    pad_token_id,
    pad_token_ids,
    token_ids,
    train_tokenizer,
)
from torchship.errors import ConfigError


def corpus(seed: int = 0, size: int = 200) -> list[str]:
    """Many made-up words over a small alphabet: lots of merges with equal counts, where a trainer that
    breaks ties by hash-map order would show it."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 8))) for _ in range(300)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for _ in range(size)]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return train_tokenizer(corpus(), vocab_size=300, max_length=16)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_special_tokens_come_first(kind: str) -> None:
    tok = train_tokenizer(corpus(), kind=kind, vocab_size=300)  # type: ignore[arg-type]
    assert [tok.token_to_id(token) for token in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert pad_token_id(tok) == 0
    assert tok.get_vocab_size() == 300


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_training_is_deterministic(kind: str) -> None:
    # Hash maps in the Rust trainer are seeded afresh for every map, so repeated runs in one process
    # would already disagree if the result depended on their order.
    texts = corpus()
    results = {train_tokenizer(texts, kind=kind, vocab_size=300).to_str() for _ in range(8)}  # type: ignore[arg-type]
    assert len(results) == 1


@pytest.mark.slow
def test_training_is_deterministic_across_processes() -> None:
    # What DDP relies on: every process trains its own tokenizer and must get the same ids.
    script = (
        "import hashlib, json, sys; from torchship.data.tokenizer import train_tokenizer; "
        "texts = json.load(sys.stdin); "
        "print(hashlib.sha256(train_tokenizer(texts, vocab_size=300).to_str().encode()).hexdigest())"
    )
    texts = json.dumps(corpus())
    runs = [
        subprocess.run(
            [sys.executable, "-c", script], input=texts, capture_output=True, text=True, check=True
        )
        for _ in range(2)
    ]
    expected = hashlib.sha256(train_tokenizer(corpus(), vocab_size=300).to_str().encode()).hexdigest()
    assert {run.stdout.strip() for run in runs} == {expected}


def test_text_order_does_not_matter() -> None:
    texts = corpus()
    assert (
        train_tokenizer(texts, vocab_size=300).to_str()
        == train_tokenizer(texts[::-1], vocab_size=300).to_str()
    )


def test_wraps_in_cls_and_sep_without_padding(tokenizer: Tokenizer) -> None:
    short, longer = tokenizer.encode_batch(["abc", "abc def ghij"])
    assert short.tokens[0] == "[CLS]" and short.tokens[-1] == "[SEP]"
    assert len(short.ids) < len(longer.ids)
    assert tokenizer.padding is None


def test_truncates_to_max_length_keeping_sep(tokenizer: Tokenizer) -> None:
    encoding = tokenizer.encode(" ".join(["abcdefghij"] * 50))
    assert len(encoding.ids) == 16
    assert encoding.tokens[-1] == "[SEP]"


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_token_ids_are_encode_batchs_ids_truncated_alike(kind: str) -> None:
    tok = train_tokenizer(corpus(), kind=kind, vocab_size=300, max_length=16)  # type: ignore[arg-type]
    texts = [*corpus(seed=1, size=30), "Naïve Ünïcode and [CLS] in the text", ""]
    ids = token_ids(tok, texts)
    assert ids == [encoding.ids for encoding in tok.encode_batch(texts)]
    assert max(len(row) for row in ids) == 16
    assert ids[-1] == [tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_long_texts_are_read_from_a_prefix_with_the_same_ids(kind: str) -> None:
    """A truncating tokenizer reads a prefix of a long text (a 6 MB body must not cost seconds for 16
    tokens); the ids are those of the whole text, also where spaces or symbols fill the prefix."""
    tok = train_tokenizer(corpus(), kind=kind, vocab_size=300, max_length=16)  # type: ignore[arg-type]
    words = " ".join(corpus(seed=2, size=400))
    texts = [
        words * 20,
        " " * 5000 + words,
        "!" * 3000 + " " + words,
        ("ab" + " " * 400) * 40,
        "abcdefghij" * 3000,
        words[:300],
    ]
    assert token_ids(tok, texts) == [encoding.ids for encoding in tok.encode_batch(texts)]


def test_lowercase_strips_accents() -> None:
    texts = ["Café Crème au lait", "CAFE creme"]
    lower = train_tokenizer(texts, vocab_size=100)
    assert lower.encode("CAFÉ").tokens == ["[CLS]", "cafe", "[SEP]"]
    cased = train_tokenizer(texts, vocab_size=100, lowercase=False)
    assert cased.encode("Café").tokens == ["[CLS]", "Café", "[SEP]"]


def test_bpe_decodes_back_to_words() -> None:
    tok = train_tokenizer(["hello world", "hello there"], kind="bpe", vocab_size=60)
    assert tok.decode(tok.encode("hello world").ids) == "hello world"


def test_unknown_characters_become_unk(tokenizer: Tokenizer) -> None:
    assert "[UNK]" in tokenizer.encode("abc 漢字").tokens


def test_survives_a_json_round_trip(tokenizer: Tokenizer) -> None:
    reloaded = Tokenizer.from_str(tokenizer.to_str())
    text = " ".join(corpus(seed=5, size=1))
    assert reloaded.encode(text).ids == tokenizer.encode(text).ids


def test_configure_tokenizer_removes_padding_and_sets_truncation(tokenizer: Tokenizer) -> None:
    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.enable_padding(length=128)
    assert configure_tokenizer(tok, 8) is tok
    assert tok.padding is None
    assert tok.truncation is not None and tok.truncation["max_length"] == 8
    assert len(tok.encode("abc").ids) < 8


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "unigram"}, "tokenizer"),
        ({"vocab_size": 3}, "vocab_size"),
        ({"max_length": 1}, "max_length"),
    ],
)
def test_bad_settings(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        train_tokenizer(["a b"], **kwargs)  # type: ignore[arg-type]


def test_pad_token_id_of_a_tokenizer_with_another_pad_spelling() -> None:
    tok = Tokenizer(models.WordLevel({"<s>": 0, "<pad>": 1, "<unk>": 2}, unk_token="<unk>"))
    assert pad_token_id(tok) == 1


def test_pad_token_id_without_a_pad_token() -> None:
    tok = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    with pytest.raises(ConfigError, match="has no padding token"):
        pad_token_id(tok)


def test_encode_texts_pads_to_the_longest_in_the_batch(tokenizer: Tokenizer) -> None:
    texts = ["abc", "abc def ghij", "a"]
    lengths = [len(tokenizer.encode(text).ids) for text in texts]
    input_ids, attention_mask = encode_texts(tokenizer, texts, pad_id=0)
    assert input_ids.dtype == torch.int64 and attention_mask.dtype == torch.bool
    assert input_ids.shape == attention_mask.shape == (3, max(lengths))
    assert attention_mask.sum(dim=1).tolist() == lengths
    assert (input_ids[~attention_mask] == 0).all()
    for row, text in enumerate(texts):
        assert input_ids[row, : lengths[row]].tolist() == tokenizer.encode(text).ids


def test_encode_texts_uses_the_given_pad_id(tokenizer: Tokenizer) -> None:
    input_ids, attention_mask = encode_texts(tokenizer, ["a", "abc def"], pad_id=-1)
    assert (input_ids[~attention_mask] == -1).all()
    assert (~attention_mask).any()


def test_encode_texts_of_nothing(tokenizer: Tokenizer) -> None:
    input_ids, attention_mask = encode_texts(tokenizer, [], pad_id=0)
    assert input_ids.shape == attention_mask.shape == (0, 0)


def test_pad_token_ids_of_empty_sequences() -> None:
    input_ids, attention_mask = pad_token_ids([[], [7, 8]], pad_id=5)
    assert input_ids.tolist() == [[5, 5], [7, 8]]
    assert attention_mask.tolist() == [[False, False], [True, True]]
    input_ids, attention_mask = pad_token_ids([[], []], pad_id=0)
    assert input_ids.dtype == torch.int64 and attention_mask.dtype == torch.bool
    assert input_ids.shape == attention_mask.shape == (2, 0)
