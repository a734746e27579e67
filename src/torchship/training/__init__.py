"""Training: the LightningModule, the run that publishes a package, and its report.

Importing this package loads Lightning; serving never imports it.
"""

from torchship.training.metrics import ClassificationMetrics
from torchship.training.module import TextClassifierModule
from torchship.training.options import ModelOptions, OptimOptions
from torchship.training.run import TRAINER_DEFAULTS, TrainResult, evaluate, train

__all__ = [
    "TRAINER_DEFAULTS",
    "ClassificationMetrics",
    "ModelOptions",
    "OptimOptions",
    "TextClassifierModule",
    "TrainResult",
    "evaluate",
    "train",
]
