"""The benchmark model and the texts sent to it, shared by every server benchmark.

    from peers import benchmark_texts, make_benchmark_package

    package = make_benchmark_package(Path("/tmp/bench-store"))   # <root>/bbc/<version>
    texts = benchmark_texts(max_words=12)                        # BBC articles, cut to 12 words

The package has the demo model's shape (``torchship train``'s defaults: 2 layers, d_model 128, 4 heads,
d_ff 256, a 16,000-token WordPiece vocabulary trained on BBC News, 512 tokens) and untrained weights:
throughput and latency do not depend on the weights, and skipping training keeps this to seconds.
"""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["BENCHMARK_MODEL_NAME", "benchmark_texts", "make_benchmark_package"]

BENCHMARK_MODEL_NAME = "bbc"


def benchmark_texts(max_words: int | None = None, seed: int = 0) -> list[str]:
    """Every BBC News article (2,225), shuffled with ``seed`` so the topics and lengths mix.

    ``max_words`` keeps each article's first words only (12 words are about 16 tokens, the input size
    behind the issue's reference numbers); None sends whole articles (truncated to 512 tokens).
    """
    from torchship.data.formats import read_examples

    texts = [example.text for example in read_examples("bbc-news")]
    if max_words is not None:
        texts = [" ".join(text.split()[:max_words]) for text in texts]
    random.Random(seed).shuffle(texts)
    return texts


def make_benchmark_package(
    root: Path, *, name: str = BENCHMARK_MODEL_NAME, max_length: int = 512, seed: int = 0
) -> Path:
    """Publish the benchmark package into the model store at ``root`` and return its directory.

    Reuses the latest published version when the store already holds one, so repeated runs skip the
    tokenizer training (a few seconds).
    """
    import torch

    from torchship.data.formats import read_examples
    from torchship.data.tokenizer import train_tokenizer
    from torchship.models import TransformerClassifier, TransformerConfig
    from torchship.store import ModelStore, PackageConfig, write_package

    store = ModelStore(root)
    if store.latest(name) is not None:
        return store.path(name)
    examples = read_examples("bbc-news")
    labels = tuple(sorted({example.label for example in examples}))
    tokenizer = train_tokenizer((e.text for e in examples), vocab_size=16000, max_length=max_length)
    config = TransformerConfig(
        vocab_size=tokenizer.get_vocab_size(),
        num_classes=len(labels),
        d_model=128,
        n_heads=4,
        n_layers=2,
        d_ff=256,
        max_length=max_length,
    )
    torch.manual_seed(seed)
    model = TransformerClassifier(config)
    package_config = PackageConfig(
        name=name,
        version=1,
        labels=labels,
        model=config,
        max_length=max_length,
        training={"note": "untrained weights, for server benchmarks only"},
    )
    version = store.publish(
        name,
        lambda directory: write_package(
            directory, config=package_config, state_dict=model.state_dict(), tokenizer=tokenizer
        ),
    )
    return store.path(name, version)
