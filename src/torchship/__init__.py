"""torchship: from data to a production REST API for PyTorch Transformer models."""

__version__ = "0.1.0"
