"""A tiny semantic segmenter (3 classes): the eager model file of the image segmenter archive.

Answers as torchvision's segmentation models do: a dict whose ``out`` is (N, classes, H, W).
"""

import torch
from torch import nn


class TinySegmenter(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, kernel_size=3, padding=1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(images)}
