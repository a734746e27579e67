"""What does Lightning add to training? The same steps through a plain PyTorch loop and through torchship.

Both sides train the same ``TransformerClassifier`` (same seed, same initial weights) on the same BBC News
batches for the same number of optimiser steps, with the same AdamW parameter groups and warm-up/decay
schedule, then run one validation pass over the validation split with the same metrics. The Lightning side
is the real pipeline of ``torchship train``: ``TextClassifierModule`` and the Trainer from
``torchship.training.run.make_trainer`` with ``TRAINER_DEFAULTS`` (checkpoints, CSV/TensorBoard logs,
history, progress bar), minus publishing. Repeats alternate between the two sides and the medians are
compared, so a noisy neighbour on a shared CPU does not decide the ratio. Target: lightning/plain <= 1.05.

    python benchmarks/train_loop_overhead.py --repeats 3      # one epoch (56 steps) per run

It prints; it does not assert.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from torchship.data.datamodule import DataConfig, TextClassificationDataModule
from torchship.models.transformer import TransformerClassifier
from torchship.training.metrics import ClassificationMetrics
from torchship.training.module import TextClassifierModule, lr_factor, parameter_groups
from torchship.training.options import ModelOptions, OptimOptions
from torchship.training.run import TRAINER_DEFAULTS, make_trainer, scratch_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=0, help="optimiser steps per run (default: one epoch)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating")
    parser.add_argument("--max_length", type=int, default=512)
    parser.add_argument(
        "--no_progress_bar", action="store_true", help="turn Lightning's progress bar off (train() keeps it)"
    )
    args = parser.parse_args()

    datamodule = TextClassificationDataModule(DataConfig("bbc-news", max_length=args.max_length))
    datamodule.setup("fit")
    model_options, optim = ModelOptions(), OptimOptions()
    epoch = len(datamodule.train_dataloader())
    steps = min(args.steps, epoch) if args.steps else epoch
    print(
        f"{steps} steps of batch {datamodule.config.batch_size}, max_length {args.max_length}, then one "
        f"validation pass over {len(datamodule.val)} texts; torch threads: {torch.get_num_threads()}"
    )

    def fresh_model() -> TransformerClassifier:
        torch.manual_seed(0)
        return scratch_classifier(datamodule, model_options)  # as torchship.training.run builds it

    progress_bar = not args.no_progress_bar
    sides: dict[str, Callable[[int], None]] = {
        "plain": lambda n: plain_loop(fresh_model(), datamodule, optim, n),
        "lightning": lambda n: lightning_loop(fresh_model(), datamodule, optim, n, progress_bar),
    }
    for side in sides.values():  # warm-up: first-call allocations, lazy imports, log directories
        side(2)
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for repeat in range(args.repeats):
        for name, side in sides.items():
            wall_started, cpu_started = time.perf_counter(), time.process_time()
            side(steps)
            wall[name].append(time.perf_counter() - wall_started)
            cpu[name].append(time.process_time() - cpu_started)
            print(
                f"  repeat {repeat + 1}: {name:<9} wall {wall[name][-1]:7.2f} s  cpu {cpu[name][-1]:7.2f} s"
            )
    # CPU time (all threads of this process) is printed too: on a shared machine it depends far less on
    # what the neighbours do than wall time.
    for title, times in (("wall", wall), ("CPU", cpu)):
        plain, lightning = (statistics.median(times[name]) for name in ("plain", "lightning"))
        print(
            f"median {title:>4} time: plain loop {plain:7.2f} s, torchship/Lightning {lightning:7.2f} s, "
            f"ratio lightning/plain {lightning / plain:.3f}  (target <= 1.05)"
        )


def plain_loop(
    model: TransformerClassifier, datamodule: TextClassificationDataModule, optim: OptimOptions, steps: int
) -> None:
    """The hand-written loop: what TextClassifierModule + Trainer do, without Lightning."""
    optimizer = torch.optim.AdamW(
        parameter_groups(model, optim),
        lr=optim.lr,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
        fused=True,
    )
    factor = functools.partial(
        lr_factor, warmup_steps=int(steps * optim.warmup_ratio), total_steps=steps, schedule=optim.schedule
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.train()
    for batch in _batches(datamodule, steps):
        logits = model(batch["input_ids"], batch["attention_mask"])
        loss: torch.Tensor = F.cross_entropy(logits, batch["labels"], label_smoothing=optim.label_smoothing)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        scheduler.step()
    model.eval()
    metrics = ClassificationMetrics(datamodule.labels, sync=False)
    with torch.inference_mode():
        for batch in datamodule.val_dataloader():
            logits = model(batch["input_ids"], batch["attention_mask"])
            metrics.update(logits, batch["labels"], F.cross_entropy(logits, batch["labels"]))
    metrics.report()


def lightning_loop(
    model: TransformerClassifier,
    datamodule: TextClassificationDataModule,
    optim: OptimOptions,
    steps: int,
    progress_bar: bool,
) -> None:
    """torchship's pipeline: the real module and the Trainer train() builds, for ``steps`` batches."""
    with tempfile.TemporaryDirectory() as root:
        options: dict[str, Any] = {
            **TRAINER_DEFAULTS,
            "accelerator": "cpu",
            "default_root_dir": root,
            "max_epochs": 1,
            "limit_train_batches": steps,
        }
        if not progress_bar:
            options["enable_progress_bar"] = False
        run = make_trainer(options)
        module = TextClassifierModule(model, datamodule.labels, optim)
        run.trainer.fit(module, datamodule=datamodule)


def _batches(datamodule: TextClassificationDataModule, steps: int) -> Iterator[dict[str, torch.Tensor]]:
    loader = datamodule.train_dataloader()
    loader.batch_sampler.set_epoch(0)  # type: ignore[union-attr]  # as Lightning does at each epoch start
    return islice(iter(loader), steps)


if __name__ == "__main__":
    L.seed_everything(0, verbose=False)
    main()
