"""The HTTP protocols the server speaks: TorchServe's REST APIs (inference, management, token), the
Open Inference Protocol (v2) and KServe's v1 protocol. Each turns requests into typed calls on ``Server``
and answers in its own error body; ``params`` reads query parameters, ``describe`` shapes TorchServe's
model descriptions."""

from torchship.serving.protocols.kserve_v1 import kserve_v1_error, kserve_v1_routes
from torchship.serving.protocols.torchserve import (
    inference_routes,
    management_routes,
    token_routes,
    torchserve_error,
)
from torchship.serving.protocols.v2 import v2_error, v2_routes

__all__ = [
    "inference_routes",
    "kserve_v1_error",
    "kserve_v1_routes",
    "management_routes",
    "token_routes",
    "torchserve_error",
    "v2_error",
    "v2_routes",
]
