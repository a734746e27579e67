"""The benchmark model behind LitServe, written the way LitServe's documentation shows.

    python benchmarks/peers/litserve_server.py --model ./models/bbc/1 --port 8000
    curl -X POST localhost:8000/predict -d '{"text": "Shares rose after the results."}'

Answers torchship's built-in handler's JSON: ``{"label", "score", "probabilities"}``. Self-contained
(only torch, torchship and litserve), so it runs as a plain script in a child process.
"""

# No ``from __future__ import annotations``: LitServe reads decode_request's annotation at runtime to
# build the FastAPI route, and a string annotation would turn the JSON body into a query parameter.
import argparse
from typing import Any

import litserve as ls
import torch


class TextClassifierLitAPI(ls.LitAPI):  # type: ignore[misc]
    """One text per request; LitServe collects up to ``max_batch_size`` of them for ``predict``."""

    def __init__(self, model_path: str, max_batch_size: int, batch_timeout: float) -> None:
        super().__init__(max_batch_size=max_batch_size, batch_timeout=batch_timeout)
        self.model_path = model_path

    def setup(self, device: str) -> None:
        from torchship.store import load_package

        self.package = load_package(self.model_path)
        self.labels = list(self.package.config.labels)

    def decode_request(self, request: dict[str, Any]) -> str:
        return str(request["text"])

    def batch(self, inputs: list[str]) -> list[str]:
        return inputs

    def predict(self, texts: list[str] | str) -> torch.Tensor:
        batch = texts if isinstance(texts, list) else [texts]
        return self.package.predict_proba(batch, batch_size=len(batch))  # (B, C)

    def unbatch(self, output: torch.Tensor) -> list[list[float]]:
        return [row.tolist() for row in output]

    def encode_response(self, output: list[float] | torch.Tensor) -> dict[str, Any]:
        values = output.flatten().tolist() if isinstance(output, torch.Tensor) else output
        ranked = sorted(range(len(values)), key=lambda index: -values[index])
        return {
            "label": self.labels[ranked[0]],
            "score": round(values[ranked[0]], 6),
            "probabilities": {self.labels[index]: round(values[index], 6) for index in ranked},
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="torchship package directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max_batch_size", type=int, default=16)
    parser.add_argument("--batch_timeout", type=float, default=0.005, help="seconds")
    args = parser.parse_args()
    api = TextClassifierLitAPI(args.model, args.max_batch_size, args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, track_requests=False)
    server.run(
        host=args.host, port=args.port, num_api_servers=1, generate_client_file=False, log_level="warning"
    )


if __name__ == "__main__":
    main()
