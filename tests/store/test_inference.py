"""The one inference path: grouping within its limits never changes an answer."""

from __future__ import annotations

import pytest
import torch

from torchship.data.tokenizer import train_tokenizer
from torchship.errors import ConfigError
from torchship.models.transformer import TransformerClassifier, TransformerConfig
from torchship.store import ModelPackage, PackageConfig, load_package, write_package
from torchship.store.inference import GPU_MAX_TOKENS, GroupLimits, TextClassifierRunner, plan_groups

TEXTS = [
    "the cat sat on the mat and looked at the birds in the garden for a long while",
    "stocks fell",
    "the team won the final after a long season of close matches and late goals",
    "a new phone",
    "rain",
    "the bank raised its forecast",
]


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    """A package that reads long texts as windows of 8 tokens: the first and third texts need several."""
    tokenizer = train_tokenizer(TEXTS * 5, vocab_size=200, max_length=64)
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=tokenizer.get_vocab_size(), num_classes=2, d_model=16, n_heads=2, n_layers=1, d_ff=32
    )
    model = TransformerClassifier(config).eval()
    package_config = PackageConfig(
        name="toy", version=1, labels=("neg", "pos"), model=config, max_length=8, long_texts="windows"
    )
    path = tmp_path_factory.mktemp("package")
    write_package(path, config=package_config, state_dict=model.state_dict(), tokenizer=tokenizer)
    return load_package(path)


class RecordingModel:
    """The package's model, remembering the shape of every forward call."""

    def __init__(self, model: TransformerClassifier) -> None:
        self.model = model
        self.calls: list[tuple[int, int]] = []

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        self.calls.append((input_ids.shape[0], input_ids.shape[1]))
        return self.model(input_ids, attention_mask)


@pytest.mark.parametrize(
    "limits",
    [
        GroupLimits(max_tokens=16, max_padding=0.0, padding_slack=0),
        GroupLimits(max_padding=0.0, padding_slack=0, max_sequences=2),
        GroupLimits(max_tokens=GPU_MAX_TOKENS, max_padding=100.0, padding_slack=10_000),
    ],
)
def test_grouping_stays_within_its_limits_and_never_changes_an_answer(
    package: ModelPackage, limits: GroupLimits
) -> None:
    recording = RecordingModel(package.model)
    runner = TextClassifierRunner.for_package(package, model=recording, limits=limits)

    probabilities = runner.probabilities(TEXTS)

    windows = sum(rows for rows, _ in recording.calls)
    assert windows > len(TEXTS)  # long texts ran as several windows
    for rows, width in recording.calls:
        assert rows == 1 or rows * width <= limits.max_tokens
        assert limits.max_sequences is None or rows <= limits.max_sequences
    alone = torch.cat([TextClassifierRunner.for_package(package).probabilities([text]) for text in TEXTS])
    torch.testing.assert_close(probabilities, alone, rtol=0, atol=1e-6)
    torch.testing.assert_close(package.predict_proba(TEXTS), alone, rtol=0, atol=1e-6)


def test_no_texts_and_shapes(package: ModelPackage) -> None:
    runner = TextClassifierRunner.for_package(package)
    assert runner.probabilities([]).shape == (0, 2)
    probabilities = runner.probabilities(TEXTS)
    assert probabilities.dtype == torch.float32 and not probabilities.requires_grad
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(len(TEXTS)))
    torch.testing.assert_close(torch.softmax(runner.logits(TEXTS), dim=-1), probabilities)


def test_groups_limit_padding_tokens_and_count_per_call() -> None:
    def limits(max_padding: float, slack: int, max_sequences: int | None = None) -> GroupLimits:
        return GroupLimits(
            max_tokens=1024, max_padding=max_padding, padding_slack=slack, max_sequences=max_sequences
        )

    assert plan_groups([5, 5, 6, 100, 110], limits(0.25, 16)) == [3, 2]
    assert plan_groups([10] * 4, limits(0.0, 0)) == [4]
    assert plan_groups([400, 410, 500, 512], limits(1.0, 512)) == [2, 2]
    assert plan_groups([2000], limits(0.25, 16)) == [1]
    assert plan_groups([], limits(0.25, 16)) == []
    assert plan_groups([10] * 5, limits(0.0, 0, max_sequences=2)) == [2, 2, 1]


def test_limits_by_device_and_checked() -> None:
    assert GroupLimits.for_device(torch.device("cpu")).max_tokens == 1024
    assert GroupLimits.for_device(torch.device("meta")).max_tokens == GPU_MAX_TOKENS
    with pytest.raises(ConfigError, match="max_tokens"):
        GroupLimits(max_tokens=0)
    with pytest.raises(ConfigError, match="max_padding"):
        GroupLimits(max_padding=float("nan"))
    with pytest.raises(ConfigError, match="max_sequences"):
        GroupLimits(max_sequences=0)


def test_predict_proba_checks_its_batch_size(package: ModelPackage) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        package.predict_proba(TEXTS, batch_size=0)
