"""A stand-in for the demo model in ``benchmarks/serve.py``: the demo's size, untrained.

The serving cost depends on the architecture and the inputs, not on what the weights learnt, so a
package with the demo's shape (d_model 128, 2 layers, 4 heads, d_ff 512, a 16k WordPiece vocabulary
trained on the BBC corpus, 512 tokens) measures the same as the trained one.
"""

from __future__ import annotations

from pathlib import Path

import torch

from torchship.data.formats import read_examples
from torchship.data.tokenizer import train_tokenizer
from torchship.models.transformer import TransformerClassifier, TransformerConfig
from torchship.store import ModelStore, PackageConfig, write_package

__all__ = ["build_stand_in"]


def build_stand_in(store_root: Path, name: str = "bbc", max_length: int = 512) -> Path:
    """Publish the stand-in into ``store_root`` and return its package directory."""
    examples = read_examples("bbc-news")
    labels = tuple(sorted({example.label for example in examples}))
    tokenizer = train_tokenizer(
        [example.text for example in examples], vocab_size=16000, max_length=max_length
    )
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=tokenizer.get_vocab_size(),
        num_classes=len(labels),
        d_model=128,
        n_heads=4,
        n_layers=2,
        d_ff=512,
        max_length=max_length,
    )
    model = TransformerClassifier(config).eval()
    package = PackageConfig(name=name, version=1, labels=labels, model=config, max_length=max_length)
    store = ModelStore(store_root)
    version = store.publish(
        name,
        lambda tmp: write_package(tmp, config=package, state_dict=model.state_dict(), tokenizer=tokenizer),
    )
    return store.path(name, version)
