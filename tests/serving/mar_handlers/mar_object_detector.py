"""TorchServe's ``object_detector`` contract without torchvision: a ``VisionHandler`` subclass.

The model answers torchvision-style detections; ``postprocess`` keeps those scoring at least
``threshold`` and answers, per image, a list of ``{label: box, "score": score}``, as the built-in
``ObjectDetector`` does.
"""

from typing import Any

import torch
from plain_transforms import ImageToTensor
from ts.torch_handler.vision_handler import VisionHandler
from ts.utils.util import map_class_to_label


class ObjectDetectorHandler(VisionHandler):  # type: ignore[misc]
    threshold = 0.5
    image_processing = ImageToTensor(12)

    def postprocess(self, data: list[dict[str, torch.Tensor]]) -> list[list[dict[str, Any]]]:
        answers = []
        for detections in data:
            keep = detections["scores"] >= self.threshold
            found = []
            for box, label, score in zip(
                detections["boxes"][keep].tolist(),
                detections["labels"][keep].tolist(),
                detections["scores"][keep].tolist(),
                strict=True,
            ):
                entry = map_class_to_label([[box]], self.mapping, [[label]])[0]
                entry["score"] = score
                found.append(entry)
            answers.append(found)
        return answers
