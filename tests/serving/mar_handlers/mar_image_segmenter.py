"""TorchServe's ``image_segmenter`` contract without torchvision: a ``VisionHandler`` subclass.

The model answers ``{"out": (N, K, H, W)}``; ``postprocess`` answers, per image, an (H, W, 2) list of
``[class, probability]`` for each pixel's most likely class, as the built-in ``ImageSegmenter`` does.
"""

from typing import Any

import torch
from plain_transforms import ImageToTensor
from ts.torch_handler.vision_handler import VisionHandler


class ImageSegmenterHandler(VisionHandler):  # type: ignore[misc]
    image_processing = ImageToTensor(6, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

    def postprocess(self, data: dict[str, torch.Tensor]) -> list[Any]:
        best = torch.softmax(data["out"], dim=1).max(dim=1)
        pixels = torch.stack([best.indices.to(best.values.dtype), best.values], dim=3)
        return pixels.tolist()  # type: ignore[no-any-return]
