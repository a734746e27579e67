"""Train, configure and apply the subword tokenizer (Hugging Face ``tokenizers``).

A tokenizer is trained on the training split only, wraps every text as ``[CLS] ... [SEP]``, truncates to
``max_length`` tokens and never pads: padding happens per batch in :func:`encode_texts`, to the longest
sequence of that batch, so short batches stay short.

    >>> tok = train_tokenizer(["a first text", "a second text"], vocab_size=100)
    >>> input_ids, attention_mask = encode_texts(tok, ["a text", "a first text"], pad_token_id(tok))
    >>> input_ids.shape
    torch.Size([2, 5])

This module must not import Lightning: serving loads tokenizers through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from torchship.errors import ConfigError

__all__ = [
    "SPECIAL_TOKENS",
    "TokenizerKind",
    "configure_tokenizer",
    "encode_texts",
    "pad_token_id",
    "token_ids",
    "train_tokenizer",
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
"""Special tokens in id order: ``[PAD]`` is 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3."""

TokenizerKind = Literal["wordpiece", "bpe"]

_PAD, _UNK, _CLS, _SEP = SPECIAL_TOKENS
_WORD_START = "\u2581"  # "▁", SentencePiece's word-start mark
_CONTINUATION = "##"  # WordPiece's mark of a piece that continues a word
# Other spellings of the padding token found in tokenizer.json files from the hub (RoBERTa, T5, ...).
_PAD_ALIASES = (_PAD, "<pad>", "<PAD>")


def train_tokenizer(
    texts: Iterable[str],
    *,
    kind: TokenizerKind = "wordpiece",
    vocab_size: int = 16000,
    lowercase: bool = True,
    max_length: int = 512,
) -> Tokenizer:
    """Train a WordPiece or BPE tokenizer on ``texts`` (pass the training split only).

    The same texts always give the same vocabulary and the same ids, in any process, so every DDP
    process that trains its own copy agrees with the others. ``[PAD]`` has id 0.
    """
    if kind not in ("wordpiece", "bpe"):
        raise ConfigError(f"tokenizer: expected 'wordpiece' or 'bpe', got {kind!r}")
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ConfigError(f"vocab_size: must be more than {len(SPECIAL_TOKENS)}, got {vocab_size}")
    # The WordPiece vocabulary holds every BPE token but the bare word-start mark "▁", hence the +1.
    bpe = _train_bpe(texts, vocab_size + (kind == "wordpiece"), _normalizer(lowercase))
    tokenizer = bpe if kind == "bpe" else _wordpiece_from_bpe(bpe, vocab_size)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{_CLS} $A {_SEP}",
        pair=f"{_CLS} $A {_SEP} $B:1 {_SEP}:1",
        special_tokens=[(_CLS, _token_id(tokenizer, _CLS)), (_SEP, _token_id(tokenizer, _SEP))],
    )
    return configure_tokenizer(tokenizer, max_length)


def configure_tokenizer(tokenizer: Tokenizer, max_length: int, *, truncate: bool = True) -> Tokenizer:
    """Truncate to ``max_length`` tokens (special tokens included) and switch padding off, in place.

    Tokenizers loaded from a ``tokenizer.json`` may carry their own padding (MiniLM's pads every text to
    128); batches are padded by :func:`encode_texts` instead. ``truncate=False`` keeps every token, for
    models that read long texts as windows (:mod:`torchship.data.windows`).
    """
    if max_length < 2:
        raise ConfigError(f"max_length: must be at least 2 (room for [CLS] and [SEP]), got {max_length}")
    if truncate:
        tokenizer.enable_truncation(max_length=max_length)
    else:
        tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def pad_token_id(tokenizer: Tokenizer) -> int:
    """The id of the padding token (0 for tokenizers trained here)."""
    for token in _PAD_ALIASES:
        token_id = tokenizer.token_to_id(token)
        if token_id is not None:
            return int(token_id)
    raise ConfigError(f"tokenizer: has no padding token (looked for {', '.join(_PAD_ALIASES)})")


def token_ids(tokenizer: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """The token ids of each text (truncated as ``tokenizer`` is configured).

    ``encode_batch_fast`` skips the character offsets, which nothing here reads, and is faster for it (see
    the performance page of the docs). Tokenizers too old to have it get ``encode_batch``, with the same
    ids.
    """
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    truncation = tokenizer.truncation
    if truncation is None:
        return [encoding.ids for encoding in encode(list(texts))]
    # Encoding costs time in the whole text while truncation keeps max_length tokens: a 6 MB text took
    # seconds for 48 tokens. Encode a prefix that ends at a space instead; its tokens are the whole text's
    # first ones, so when it fills max_length the answer is the same. Texts it does not fill (long runs of
    # spaces or symbols) are encoded whole.
    limit = int(truncation["max_length"])
    budget = limit * _PREFIX_CHARS_PER_TOKEN
    prefixes = [_prefix(text, budget) for text in texts]
    ids = [encoding.ids for encoding in encode(prefixes)]
    short = [i for i, (text, prefix) in enumerate(zip(texts, prefixes, strict=True)) if prefix is not text]
    short = [i for i in short if len(ids[i]) < limit]
    if short:
        for i, encoding in zip(short, encode([texts[i] for i in short]), strict=True):
            ids[i] = encoding.ids
    return ids


_PREFIX_CHARS_PER_TOKEN = 16  # a token is a few characters; 16 leaves room for spaces and punctuation


def _prefix(text: str, budget: int) -> str:
    """``text`` cut at its last whitespace before ``budget`` characters (``text`` itself when shorter, or
    when no whitespace is there to cut at)."""
    if len(text) <= budget:
        return text
    cut = max(text.rfind(" ", 0, budget), text.rfind("\n", 0, budget))
    return text[:cut] if cut > 0 else text


def encode_texts(
    tokenizer: Tokenizer, texts: Sequence[str], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode ``texts`` and pad them to the longest one in this batch.

    Returns ``input_ids`` (B, T) int64 and ``attention_mask`` (B, T) bool, True on real tokens.
    """
    return pad_token_ids(token_ids(tokenizer, texts), pad_id)


def pad_token_ids(sequences: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad already tokenised sequences to the longest one: ``(input_ids, attention_mask)``, int64 and
    bool, both (B, T)."""
    if not sequences:
        return torch.empty(0, 0, dtype=torch.int64), torch.empty(0, 0, dtype=torch.bool)
    lengths = [len(ids) for ids in sequences]
    padding = [pad_id] * max(lengths)
    # One tensor from padded lists: filling a tensor row by row (a copy per row) is several times slower on
    # a batch of short texts.
    padded = [ids + padding[n:] for ids, n in zip(sequences, lengths, strict=True)]
    input_ids = torch.tensor(padded, dtype=torch.int64)  # (B, T)
    attention_mask = torch.arange(len(padding)) < torch.tensor(lengths).unsqueeze(1)  # (B, T) True on tokens
    return input_ids, attention_mask


def _train_bpe(texts: Iterable[str], vocab_size: int, normalizer: normalizers.Normalizer) -> Tokenizer:
    # Why not tokenizers' WordPieceTrainer, or BpeTrainer with a "##" prefix or "</w>" suffix: those
    # number the prefixed/suffixed symbols in hash-map order, which changes from process to process,
    # and merges with equal counts are ranked by those numbers, so each run learns a (slightly)
    # different vocabulary (huggingface/tokenizers#1794). Marking word starts with Metaspace's "▁"
    # instead keeps every initial symbol a plain character, numbered in sorted order, which makes
    # the merges, and hence the vocabulary, the same in every process.
    tokenizer = Tokenizer(models.BPE(unk_token=_UNK))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Metaspace(_WORD_START, "always", split=False)]
    )
    tokenizer.decoder = decoders.Metaspace(_WORD_START, "always", split=False)
    # special_tokens first, in order, so that [PAD] gets id 0 whatever the texts are.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _wordpiece_from_bpe(bpe: Tokenizer, vocab_size: int) -> Tokenizer:
    """A WordPiece tokenizer with the pieces ``bpe`` learned: "▁word" -> "word", "piece" -> "##piece"."""
    learned = sorted(bpe.get_vocab().items(), key=lambda item: item[1])
    tokens = [token for token, _ in learned if token not in SPECIAL_TOKENS]
    characters = sorted({char for token in tokens for char in token} - {_WORD_START})
    # Every character as a word start and as a continuation first, so no word becomes [UNK] whole.
    vocab: dict[str, int] = {}
    for token in (*SPECIAL_TOKENS, *characters, *(_CONTINUATION + char for char in characters)):
        vocab.setdefault(token, len(vocab))
    for token in tokens:
        if len(vocab) >= vocab_size:
            break
        if token != _WORD_START:
            piece = token[1:] if token.startswith(_WORD_START) else _CONTINUATION + token
            vocab.setdefault(piece, len(vocab))
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token=_UNK, continuing_subword_prefix=_CONTINUATION))
    tokenizer.normalizer = bpe.normalizer
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=_CONTINUATION)
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))  # already in the vocabulary: the ids stay 0-3
    return tokenizer


def _normalizer(lowercase: bool) -> normalizers.Normalizer:
    if lowercase:
        # NFD splits accented letters so StripAccents can drop the marks: "Café" -> "cafe".
        return normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase(), normalizers.StripAccents()])
    return normalizers.NFC()


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:  # pragma: no cover - the trainer always adds the special tokens
        raise ConfigError(f"tokenizer: special token {token} is missing from the vocabulary")
    return int(token_id)
