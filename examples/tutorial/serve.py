"""The classic handler tutorial, as written: ``inference`` calls ``preprocess`` and ``postprocess`` itself.

    python make_model.py && python serve.py
    curl -X POST http://127.0.0.1:8080/predictions/model -H 'Content-Type: application/json' \
         -d '{"features": [0.1, 0.2, 0.3, 0.4]}'

The server passes ``inference`` a batch: a list with one payload per request (concurrent requests are
batched together), and expects one result per request back. There is no ``if __name__ == "__main__"``
guard on purpose: ``start()`` does nothing inside the worker processes that re-import this file.
"""

import torch

from torchship import ModelAPI


class MyModelAPI(ModelAPI):
    def inference(self, data):
        input = self.preprocess(data)
        output = self.model(input)
        return self.postprocess(output)

    def preprocess(self, data):
        return torch.tensor([request["features"] for request in data], dtype=torch.float32)  # (B, 4)

    def postprocess(self, output):
        return [{"probabilities": row} for row in output.tolist()]


api = MyModelAPI(model_path="model.pth")
api.start()
