"""TorchServe's ``image_classifier`` contract without torchvision: a ``VisionHandler`` subclass.

``VisionHandler`` (captum and PIL) decodes each request's image (bytes, or base64 text) and stacks the
``image_processing`` results; ``postprocess`` answers, per image, the top ``topk`` labels with their
probabilities through ``map_class_to_label``, as the built-in ``ImageClassifier`` does.
"""

from typing import Any

import torch
from plain_transforms import ImageToTensor
from ts.torch_handler.vision_handler import VisionHandler
from ts.utils.util import map_class_to_label


class ImageClassifierHandler(VisionHandler):  # type: ignore[misc]
    topk = 3
    image_processing = ImageToTensor(16, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))

    def postprocess(self, data: torch.Tensor) -> list[dict[str, Any]]:
        probabilities, classes = torch.topk(torch.softmax(data, dim=1), self.topk, dim=1)
        return map_class_to_label(probabilities.tolist(), self.mapping, classes.tolist())  # type: ignore[no-any-return]
