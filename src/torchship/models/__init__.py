"""Plain ``nn.Module`` models: the Transformer classifier and loading of local pretrained encoders."""

from torchship.models.pretrained import load_pretrained, minilm_path
from torchship.models.transformer import TransformerClassifier, TransformerConfig

__all__ = [
    "TransformerClassifier",
    "TransformerConfig",
    "load_pretrained",
    "minilm_path",
]
