"""The built-in text classifier, in-process: same numbers as the package, bad inputs fail alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from serving_support import publish_classifier

from torchship.data.tokenizer import pad_token_ids
from torchship.data.windows import split_windows
from torchship.errors import UserInputError
from torchship.serving import TextClassifierAPI
from torchship.store import load_package
from torchship.store.inference import GroupLimits


@pytest.fixture(scope="module")
def api(store_root: Path) -> TextClassifierAPI:
    api = TextClassifierAPI(model_path=store_root / "news" / "1")
    api.setup()
    return api


def test_batched_answers_match_the_package(api: TextClassifierAPI, store_root: Path) -> None:
    texts = ["a goal", "the market fell as oil prices climbed and climbed", "software", "the coach"]
    answers = api.predict([{"text": t} for t in texts])
    expected = load_package(store_root / "news" / "1").predict_proba(texts)
    for answer, row in zip(answers, expected, strict=True):
        assert answer["score"] == pytest.approx(float(row.max()), abs=1e-5)
        assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_payload_forms_and_top_k(api: TextClassifierAPI) -> None:
    as_bytes, as_text, ranked = api.predict([b'{"text": "a goal"}', "a goal", {"text": "a goal", "top_k": 2}])
    assert as_bytes == as_text
    assert list(ranked["probabilities"]) == list(as_text["probabilities"])[:2]


def test_bad_payloads_fail_alone(api: TextClassifierAPI) -> None:
    answers = api.predict([{"texts": ["a"]}, {"text": "ok"}, 3, b"\xff"])
    assert [type(a) for a in answers] == [UserInputError, dict, UserInputError, UserInputError]
    assert "one text per request" in str(answers[0])


def test_handler_groups_as_predict_does_by_default(api: TextClassifierAPI) -> None:
    for device in (torch.device("cpu"), torch.device("meta")):  # meta: any accelerator
        assert api.group_limits(device) == GroupLimits.for_device(device)
    assert api.runner.limits == GroupLimits.for_device(torch.device("cpu"))


def test_signature_names_the_labels_without_loading(store_root: Path) -> None:
    signature = TextClassifierAPI(model_path=store_root / "news" / "1").signature()
    assert signature["outputs"][2]["shape"] == [-1, 3]


def test_windows_package_averages_every_window_of_a_long_text(tmp_path: Path) -> None:
    publish_classifier(tmp_path, "long", seed=3, long_texts="windows", max_length=8, window_overlap=2)
    api = TextClassifierAPI(model_path=tmp_path / "long" / "1")
    api.setup()
    long_text = (
        "the team won the cup final with a late goal and the coach praised his players after the match"
    )
    texts = [long_text, "a goal", long_text + " shares in the bank rose", "software"]

    answers = api.predict([{"text": t} for t in texts])

    package = load_package(tmp_path / "long" / "1")
    for text, answer in zip(texts, answers, strict=True):
        windows = split_windows(package.tokenizer.encode(text).ids, 8, 2)
        assert (len(windows) > 1) == (text not in ("a goal", "software"))
        ids, mask = pad_token_ids(windows, package.config.model.pad_id)
        with torch.inference_mode():
            expected = torch.softmax(package.model(ids, mask).mean(dim=0), dim=-1)
        assert answer["probabilities"] == pytest.approx(
            {label: float(p) for label, p in zip(package.labels, expected, strict=True)}, abs=1e-5
        )
    expected_rows = package.predict_proba(texts)
    assert [a["score"] for a in answers] == pytest.approx(expected_rows.max(dim=1).values.tolist(), abs=1e-5)
