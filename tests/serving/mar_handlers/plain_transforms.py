"""Image preprocessing in plain torch and PIL, for handlers that follow the built-in vision handlers'
contract where torchvision cannot be installed (an extra file of the vision archives).

``ImageToTensor`` does what the built-ins' ``transforms.Compose([Resize, ToTensor, Normalize])`` does:
an RGB float tensor (3, size, size) in [0, 1], then normalised per channel.
"""

import torch
from PIL import Image


class ImageToTensor:
    def __init__(
        self,
        size: int,
        mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
        std: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> None:
        self.size = size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        rgb = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        pixels = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        tensor = pixels.view(self.size, self.size, 3).permute(2, 0, 1).float() / 255.0
        return (tensor - self.mean) / self.std
