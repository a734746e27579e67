from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from torchship.models.transformer import TransformerClassifier, TransformerConfig
from torchship.training.module import TextClassifierModule, lr_factor, parameter_groups
from torchship.training.options import OptimOptions

LABELS = ("a", "b", "c")


def _batches(count: int, batch_size: int = 8, seed: int = 0) -> list[dict[str, Tensor]]:
    """Token 4+label, repeated at positions 1-3, marks the class; padding follows a random length."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, 3, (batch_size,), generator=generator)
        input_ids = torch.randint(7, 30, (batch_size, 12), generator=generator)
        lengths = torch.randint(4, 13, (batch_size,), generator=generator)
        positions = torch.arange(12).expand(batch_size, 12)
        mask = positions < lengths.unsqueeze(1)
        input_ids[:, 1:4] = (4 + labels).unsqueeze(1)  # (B, 3)
        input_ids = input_ids.masked_fill(~mask, 0)
        batches.append({"input_ids": input_ids, "attention_mask": mask, "labels": labels})
    return batches


def _module(optim: OptimOptions | None = None) -> TextClassifierModule:
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=30, num_classes=3, d_model=16, n_heads=2, n_layers=1, d_ff=32, max_length=16
    )
    return TextClassifierModule(TransformerClassifier(config), LABELS, optim or OptimOptions(lr=5e-3))


def _trainer(tmp_path: Path, max_epochs: int = 3) -> L.Trainer:
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def _loader(batches: list[dict[str, Tensor]]) -> DataLoader[dict[str, Tensor]]:
    return DataLoader(batches, batch_size=None)  # type: ignore[arg-type]


def test_lr_factor_warms_up_linearly_then_decays_to_zero() -> None:
    cosine = [lr_factor(s, warmup_steps=4, total_steps=20, schedule="cosine") for s in range(21)]
    assert cosine[:4] == [0.25, 0.5, 0.75, 1.0]
    assert cosine[4] == 1.0
    assert all(later <= earlier for earlier, later in itertools.pairwise(cosine[4:]))
    assert cosine[12] == pytest.approx(0.5)  # half-way through the decay
    assert cosine[20] == pytest.approx(0.0)
    linear = [lr_factor(s, warmup_steps=0, total_steps=10, schedule="linear") for s in range(11)]
    assert linear == pytest.approx([1 - s / 10 for s in range(11)])
    assert lr_factor(7, warmup_steps=2, total_steps=10, schedule="constant") == 1.0
    assert lr_factor(50, warmup_steps=2, total_steps=10, schedule="cosine") == pytest.approx(0.0)


def test_parameter_groups_skip_decay_on_biases_norms_and_embeddings() -> None:
    module = _module(OptimOptions(lr=1e-3, encoder_lr=1e-5, weight_decay=0.1))
    groups = parameter_groups(module.model, module.optim)
    by_id = {id(p): group for group in groups for p in group["params"]}
    model = module.model
    assert by_id[id(model.token_embedding.weight)]["weight_decay"] == 0.0
    assert by_id[id(model.encoder.layers[0].norm1.weight)]["weight_decay"] == 0.0
    assert by_id[id(model.encoder.layers[0].linear1.bias)]["weight_decay"] == 0.0
    assert by_id[id(model.encoder.layers[0].linear1.weight)]["weight_decay"] == 0.1
    assert by_id[id(model.encoder.layers[0].linear1.weight)]["lr"] == 1e-5
    assert by_id[id(model.head.weight)] == {
        "params": by_id[id(model.head.weight)]["params"],
        "lr": 1e-3,
        "weight_decay": 0.1,
    }
    assert by_id[id(model.head.bias)]["lr"] == 1e-3
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))


def test_fit_learns_and_keeps_validation_report(tmp_path: Path) -> None:
    module = _module()
    trainer = _trainer(tmp_path, max_epochs=6)
    trainer.fit(module, _loader(_batches(12)), _loader(_batches(3, seed=1)))

    report = module.validation_report
    assert report is not None
    assert report["accuracy"] >= 0.9
    assert sum(map(sum, report["confusion_matrix"])) == 24
    assert set(report["per_class"]) == set(LABELS)
    assert sum(scores["support"] for scores in report["per_class"].values()) == 24
    metrics = trainer.callback_metrics
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_macro_f1"):
        assert key in metrics
    assert float(metrics["val_accuracy"]) == pytest.approx(report["accuracy"])


def test_scheduler_steps_per_batch_over_estimated_total(tmp_path: Path) -> None:
    module = _module(OptimOptions(lr=1e-2, warmup_ratio=0.25, schedule="linear"))
    trainer = _trainer(tmp_path, max_epochs=2)
    trainer.fit(module, _loader(_batches(4)), _loader(_batches(1)))

    # 2 epochs x 4 batches = 8 steps, 2 of warm-up; after the last step the linear decay reached 0.
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    assert trainer.lr_scheduler_configs[0].interval == "step"
    factor = scheduler.lr_lambdas[0]
    assert isinstance(factor, functools.partial)
    assert factor.keywords == {"warmup_steps": 2, "total_steps": 8, "schedule": "linear"}
    assert [group["lr"] for group in trainer.optimizers[0].param_groups] == pytest.approx([0.0] * 4)


def test_test_and_predict_steps(tmp_path: Path) -> None:
    module = _module()
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.test(module, _loader(_batches(2)), verbose=False)
    assert module.test_report is not None
    assert sum(map(sum, module.test_report["confusion_matrix"])) == 16
    assert not math.isnan(module.test_report["loss"])

    predictions = trainer.predict(module, _loader(_batches(2)))
    assert predictions is not None
    probabilities = torch.cat(predictions)  # type: ignore[arg-type]
    assert probabilities.shape == (16, 3)
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(16))


def test_hyperparameters_are_plain_data(tmp_path: Path) -> None:
    module = _module(OptimOptions(lr=3e-3, label_smoothing=0.1))
    assert module.hparams["labels"] == list(LABELS)
    assert module.hparams["optim"]["lr"] == 3e-3
    assert module.hparams["model"]["d_model"] == 16
    trainer = _trainer(tmp_path, max_epochs=1)
    trainer.fit(module, _loader(_batches(2)))
    trainer.save_checkpoint(tmp_path / "module.ckpt")
    # weights_only=True refuses anything but tensors and plain containers: nothing of ours is pickled.
    checkpoint = torch.load(tmp_path / "module.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["optim"]["label_smoothing"] == 0.1
