"""Train the demo classifier on BBC News and print its test accuracy, macro-F1 and wall time.

    python benchmarks/train_bbc.py                  # from-scratch TransformerClassifier, torchship's defaults
    python benchmarks/train_bbc.py --model minilm   # fine-tune all-MiniLM-L6-v2 (pip install 'torchship[hf]')
    python benchmarks/train_bbc.py --seeds 42,1,2,3,4   # five training seeds on the split of --seed 42

The split is the seeded, stratified 80/10/10 split of ``torchship train --data bbc-news``; the package is
published into a temporary store (or ``--store``). Targets on a 2-core CPU: from scratch >= 97% test
accuracy within 5 minutes of training; MiniLM >= 99%. For scale: TF-IDF + a linear SVM scores about 99%
in seconds. The script prints; it does not assert.

Why the naive from-scratch encoder stalls and what the defaults do instead (measured on the shared 2-core
CPU, so wall times carry the neighbours' load):

* attention dropout: any p > 0 sends ``nn.MultiheadAttention`` to the unfused path that materialises
  (B, H, T, T) weights and draws a Bernoulli mask per weight: at 512 tokens 30% of a step went to
  ``bernoulli_`` and the step took 2.3x longer. torchship keeps dropout elsewhere and none on attention.
* fused AdamW: the per-tensor AdamW spent ~135 ms per step on the 2M-parameter embedding table, the fused
  kernel ~10 ms.
* pre-norm layers, 10% linear warm-up then cosine decay, lr 2e-3, masked-mean pooling (padding never
  counts), 512 tokens (the median article is ~420 WordPiece tokens, so 256 cuts most of it), batches
  grouped by length.
* 4 epochs: the training loss is ~0.01 by epoch 3-4 and validation peaks there; 8 epochs only memorised
  (val 96% at epoch 4 -> 95.5% at epoch 8, test of the epoch-4 checkpoint 98.2%).

Runs (2 layers, width 128, 4 heads, d_ff 256 unless noted; best-validation checkpoint):

    512 tokens, 8 epochs   val 95.96  test 98.21  (best at epoch 4)
    512 tokens, 5 epochs   val 97.31  test 98.21  (best at epoch 4)
    512 tokens, 4 epochs   val 98.21  test 97.76  (best at epoch 3)   <- defaults
    same, --seed 7         val 98.65  test 96.86  (best at epoch 3; a different split, fit 243 s)
    same, --seeds 42,1,2,3,4 (split of seed 42)   test 97.76 95.96 98.65 98.21 96.86, mean 97.49
    same with --label_smoothing 0.1               test 96.86 96.41 97.31 97.76 96.86, mean 97.04
    same with --ema_decay 0.98                    test 98.21 96.86 97.76 98.21 96.86, mean 97.58
    384 tokens, 5 epochs   val 98.65  test 97.76  (best at epoch 3)
    1 layer, 512, 6 epochs val 97.31  test 95.52  (best at epoch 3)

An epoch at 512 tokens takes ~52 s on the 2 cores when they are otherwise idle, 90-240 s when shared.

``--model minilm`` (the MINILM recipe below: whole articles as 64-token windows, one epoch), alone on the
2 cores, 2026-12-04: test accuracy 99.55 for the default seed (42); 99.10 / 99.10 / 98.21 / 98.65 for
training seeds 1 / 2 / 3 / 4 (``--seeds``), mean of the five 98.92; val 96.41-96.86; fit 558-602 s each,
whole run 635-686 s. The same seed-42 network scored on each article's first 64 tokens only: test 97.76.
The earlier recipe, the first 256 tokens and 3 epochs (batch 16), scored val 97.76, test 96.86 in a fit
of 1,484 s; 512 tokens and 2 epochs, test 97.31. TF-IDF + a linear SVM scores 98.21 on this split
(``benchmarks/baseline_tfidf.py``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from torchship.data.datamodule import DataConfig
from torchship.training import ModelOptions, OptimOptions, train

# Fine-tuning recipe for all-MiniLM-L6-v2: whole articles read as 64-token windows (each a training
# example; evaluation averages a text's windows, which overlap by half), a small encoder learning rate
# and a larger one for the new head, one epoch over the ~14,800 training windows.
MINILM: dict[str, Any] = {
    "max_length": 64,
    "long_texts": "windows",
    "lr": 1e-3,
    "encoder_lr": 5e-5,
    "epochs": 1,
    "batch_size": 32,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["scratch", "minilm"], default="scratch")
    parser.add_argument("--pretrained", default=None, help="with --model minilm: another BERT directory")
    parser.add_argument("--store", default=None, help="publish here instead of a temporary store")
    parser.add_argument("--epochs", type=int, default=None, help="default: torchship's (scratch) or 3")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--encoder_lr", type=float, default=None)
    parser.add_argument("--warmup_ratio", type=float, default=None)
    parser.add_argument("--weight_decay", type=float, default=None)
    parser.add_argument("--label_smoothing", type=float, default=None)
    parser.add_argument("--ema_decay", type=float, default=None, help="EMA of the weights (Lightning's)")
    parser.add_argument("--max_length", type=int, default=None)
    parser.add_argument("--long_texts", choices=["truncate", "windows"], default=None)
    parser.add_argument("--window_overlap", type=int, default=None, help="default: half a window")
    parser.add_argument("--batch_size", type=int, default=None)
    parser.add_argument("--vocab_size", type=int, default=None)
    parser.add_argument("--d_model", type=int, default=None)
    parser.add_argument("--n_heads", type=int, default=None)
    parser.add_argument("--n_layers", type=int, default=None)
    parser.add_argument("--d_ff", type=int, default=None)
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--pooling", choices=["mean", "cls"], default=None)
    parser.add_argument("--seed", type=int, default=42, help="seed of the split and of the training")
    parser.add_argument(
        "--seeds",
        default=None,
        help="comma-separated training seeds, one run each on the split of --seed (e.g. 42,1,2,3,4)",
    )
    parser.add_argument("--accelerator", default="cpu", help="Lightning's accelerator: cpu, gpu, auto")
    parser.add_argument("--precision", default=None, help="Lightning's precision, e.g. bf16-mixed")
    args = parser.parse_args()

    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [args.seed]
    runs = [_run(args, seed) for seed in seeds]
    if len(runs) > 1:
        print(f"\n{len(runs)} training seeds on the split of seed {args.seed}:")
        for seed, (metrics, wall, _) in zip(seeds, runs, strict=True):
            print(
                f"  seed {seed:>4}  test accuracy {metrics['test']['accuracy']:.4f}  macro-F1 "
                f"{metrics['test']['macro_f1']:.4f}  val {metrics['validation']['accuracy']:.4f}  "
                f"fit {metrics['train_time_s']:.1f} s  wall {wall:.1f} s"
            )
        for key in ("accuracy", "macro_f1"):
            values = [metrics["test"][key] for metrics, _, _ in runs]
            print(
                f"  test {key}: mean {statistics.mean(values):.4f}  min {min(values):.4f}  "
                f"max {max(values):.4f}  stdev {statistics.stdev(values):.4f}"
            )


def _run(args: argparse.Namespace, seed: int) -> tuple[dict[str, Any], float, float]:
    recipe = MINILM if args.model == "minilm" else {}
    data_options = _given(
        args, recipe, "max_length", "batch_size", "vocab_size", "long_texts", "window_overlap"
    )
    model_options = _given(args, {}, "d_model", "n_heads", "n_layers", "d_ff", "dropout", "pooling")
    optim_options = _given(
        args, recipe, "lr", "encoder_lr", "warmup_ratio", "weight_decay", "label_smoothing"
    )
    trainer: dict[str, Any] = {"accelerator": args.accelerator, "enable_progress_bar": False}
    if args.ema_decay is not None:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        trainer["callbacks"] = [EMAWeightAveraging(decay=args.ema_decay)]
    if args.precision is not None:
        trainer["precision"] = args.precision
    epochs = args.epochs if args.epochs is not None else recipe.get("epochs")
    if epochs is not None:
        trainer["max_epochs"] = epochs
    pretrained = (args.pretrained or "minilm") if args.model == "minilm" else None

    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or f"{tmp}/models"
        trainer["default_root_dir"] = f"{tmp}/runs"
        started, cpu_started = time.perf_counter(), time.process_time()
        result = train(
            DataConfig("bbc-news", seed=seed, split_seed=args.seed, **data_options),
            store=store,
            name=f"bbc-{args.model}",
            model=ModelOptions(pretrained=pretrained, **model_options),
            optim=OptimOptions(**optim_options),
            trainer=trainer,
        )
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started

    metrics = result.metrics
    print()
    print(f"model: {args.model}  seed: {seed} (split: {args.seed})  data: {data_options}")
    print(f"model: {model_options}  optim: {optim_options}  trainer: {trainer}")
    for row in metrics["history"]:
        print(
            f"  epoch {row['epoch']:>2}  {row['time_s']:6.1f} s  train_loss {row.get('train_loss', 0):.4f}  "
            f"val_loss {row.get('val_loss', 0):.4f}  val_acc {row.get('val_accuracy', 0):.4f}  "
            f"val_f1 {row.get('val_macro_f1', 0):.4f}"
        )
    print(f"best checkpoint: {metrics['best_checkpoint']}")
    for split in ("validation", "test"):
        scores = metrics[split]
        print(f"{split:>10} accuracy {scores['accuracy']:.4f}  macro-F1 {scores['macro_f1']:.4f}")
    print(f"training time (Trainer.fit): {metrics['train_time_s']:.1f} s")
    print(f"wall time (data, tokenizer, fit, evaluation, publishing): {wall:.1f} s")
    # On a shared machine wall time depends on the neighbours; CPU time (all threads) much less so.
    print(f"CPU time of the whole run, all threads: {cpu:.1f} s", flush=True)
    return metrics, wall, cpu


def _given(args: argparse.Namespace, recipe: dict[str, Any], *names: str) -> dict[str, Any]:
    values = {name: recipe[name] for name in names if name in recipe}
    values.update({name: getattr(args, name) for name in names if getattr(args, name) is not None})
    return values


if __name__ == "__main__":
    main()
