"""Write ``model.pth`` for ``serve.py``: a small classifier of 4 features, saved with ``torch.export``.

torchship loads TorchScript and ``torch.export`` files by default, never pickles: a ``torch.save`` of a
model or a state dict can run code when loaded. Run it in the folder you serve from:

    python make_model.py
"""

import torch

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Softmax(dim=-1)).eval()
batch = torch.export.Dim("batch", min=1)  # any number of requests per batch
program = torch.export.export(model, (torch.randn(2, 4),), dynamic_shapes=({0: batch},))
torch.export.save(program, "model.pth")
print("wrote model.pth")
