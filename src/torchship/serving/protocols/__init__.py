"""The HTTP protocols the server speaks: TorchServe's REST APIs and the Open Inference Protocol (v2)."""

from torchship.serving.protocols.torchserve import inference_routes, management_routes
from torchship.serving.protocols.v2 import v2_error, v2_routes

__all__ = ["inference_routes", "management_routes", "v2_error", "v2_routes"]
