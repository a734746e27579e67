"""A bag-of-words text classifier: the eager model file of the text archives.

TorchServe's ``BaseHandler`` imports this file from the unpacked archive, instantiates the one
``nn.Module`` class it defines without arguments, and loads the archive's state dict into it. The
attribute ``embedding`` is what the built-in ``text_classifier`` handler hands to captum.
"""

import torch
from torch import nn


class TextModel(nn.Module):
    def __init__(self, vocab_size: int = 64, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embedding = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        self.fc = nn.Linear(dim, classes)

    def forward(self, text: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embedding(text, offsets))  # type: ignore[no-any-return]
