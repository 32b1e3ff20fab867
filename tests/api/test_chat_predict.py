"""`POST /v1/models/{id}/predict` with `messages` on a chat model (a tiny Llama with a ChatML
template, trained a few steps on the toy copy task so that it writes words): the answer is what
the model generates from its chat template with the generation prompt; `"stream": true` sends the
same answer as server-sent events, piece by piece, then the whole with its usage; bad messages,
and messages to a model with no chat template, are 400s naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.factories.api import assert_error, upload_model_dir
from tests.factories.chat import save_trained_chat_llama
from tests.factories.lm import save_gpt2

USER = {"role": "user", "content": "copy red cat"}
CONVERSATION = [{"role": "system", "content": "copy the words"}, USER]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_trained_chat_llama(tmp_path_factory.mktemp("chat") / "model")


@pytest.fixture
def chat_model(client: Any, auth: dict[str, str], chat_dir: Path) -> str:
    return str(upload_model_dir(client, auth, chat_dir)["id"])


def _expected(chat_dir: Path, messages: list[dict[str, str]], new_tokens: int) -> str:
    """What the model answers as a user of transformers would ask it (greedy)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    model = AutoModelForCausalLM.from_pretrained(chat_dir).eval()
    prompt: Any = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                return_tensors="pt", return_dict=True)
    ids = model.generate(**prompt, max_new_tokens=new_tokens, do_sample=False)
    return str(tokenizer.decode(ids[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True))


def _events(response: Any) -> list[tuple[str, str]]:
    """(event, data) of a server-sent event stream, in order."""
    events: list[tuple[str, str]] = []
    data: list[str] = []
    name = "message"
    for line in response.iter_lines():
        if not line:
            if data:
                events.append((name, "\n".join(data)))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:"):].removeprefix(" "))
    if data:
        events.append((name, "\n".join(data)))
    return events


def test_messages_are_answered_through_the_chat_template(
    client: Any, auth: dict[str, str], chat_model: str, chat_dir: Path,
) -> None:
    response = client.post(f"/v1/models/{chat_model}/predict", headers=auth,
                           json={"messages": CONVERSATION, "max_new_tokens": 6})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["object"], body["model"], body["runtime"]) == ("list", chat_model, "torch")
    assert [set(row) for row in body["data"]] == [{"text"}]
    answer = body["data"][0]["text"]
    assert answer == _expected(chat_dir, CONVERSATION, 6)
    assert answer.strip() and "<|im_end|>" not in answer  # words, no special token


def test_a_streamed_answer_is_the_answer_piece_by_piece(
    client: Any, auth: dict[str, str], chat_model: str,
) -> None:
    url = f"/v1/models/{chat_model}/predict"
    plain = client.post(url, headers=auth, json={"messages": CONVERSATION, "max_new_tokens": 6})

    with client.stream("POST", url, headers=auth,
                       json={"messages": CONVERSATION, "max_new_tokens": 6, "stream": True}
                       ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response)

    names = [name for name, _ in events]
    assert names[-2:] == ["completion", "done"] and set(names[:-2]) == {"token"}
    pieces = [json.loads(data)["text"] for name, data in events if name == "token"]
    completion = json.loads(events[-2][1])
    answer = plain.json()["data"][0]["text"]
    assert len(pieces) >= 2 and "".join(pieces) == answer == completion["data"][0]["text"]
    assert (completion["object"], completion["model"], completion["runtime"]) == (
        "list", chat_model, "torch")
    assert completion["usage"]["prompt_tokens"] > 0
    assert 1 <= completion["usage"]["completion_tokens"] <= 6
    assert events[-1][1] == "[DONE]"


def test_a_failure_mid_answer_is_an_error_event(
    client: Any, auth: dict[str, str], chat_model: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers import LlamaForCausalLM

    # Given a model whose third forward pass (the second token after the prompt's) fails
    forward = LlamaForCausalLM.forward
    calls = {"n": 0}

    def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("out of memory, say")
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", failing)
    with client.stream("POST", f"/v1/models/{chat_model}/predict", headers=auth,
                       json={"messages": CONVERSATION, "max_new_tokens": 6, "stream": True}
                       ) as response:
        assert response.status_code == 200
        events = _events(response)

    # Then the pieces written before it came, then an error event, and the stream ended
    assert [name for name, _ in events][-1] == "error"
    assert {name for name, _ in events[:-1]} <= {"token"}
    error = json.loads(events[-1][1])["error"]
    assert error["code"] == "generation_failed" and "out of memory, say" in error["message"]
    assert calls["n"] == 3


@pytest.mark.parametrize(("body", "status", "param", "said"), [
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages[0].role", "got 'tool'"),
    ({"messages": [USER, {"role": "assistant", "content": "red cat"}]}, 400, "messages[1]",
     "end the conversation with the user's"),
    ({"messages": [USER, {"role": "user", "content": ""}]}, 400, "messages[1].content",
     "is empty"),
    ({"messages": [{"role": "user", "content": 7}]}, 400, "messages[0].content",
     "must be a string"),
    ({"messages": "copy red cat"}, 400, "messages", "must be a list"),
    ({"messages": []}, 400, "messages", "is empty"),
    ({"messages": [{"role": "system", "content": "x"}]}, 400, "messages", "no user turn"),
    ({"messages": [USER], "inputs": ["copy red"]}, 400, "messages", "not both"),
    ({"inputs": ["copy red"], "stream": True}, 400, "stream", "send messages"),
    ({"max_new_tokens": 4}, 422, "inputs", "inputs"),
])
def test_bad_messages_are_refused_naming_the_field(
    client: Any, auth: dict[str, str], chat_model: str, body: dict[str, Any], status: int,
    param: str, said: str,
) -> None:
    response = client.post(f"/v1/models/{chat_model}/predict", headers=auth, json=body)

    assert said in assert_error(response, status, param=param)["message"]


def test_messages_over_the_size_limit_are_a_422(
    client: Any, auth: dict[str, str], chat_model: str, settings: Any,
) -> None:
    long = {"role": "user", "content": "x" * (settings.predict_max_chars + 1)}

    response = client.post(f"/v1/models/{chat_model}/predict", headers=auth,
                           json={"messages": [long]})

    assert_error(response, 422, code="input_too_long", param="messages")


def test_messages_need_a_model_with_a_chat_template(
    client: Any, auth: dict[str, str], tmp_path: Path, tiny_teacher_dir: Path,
) -> None:
    plain_lm = upload_model_dir(client, auth, save_gpt2(tmp_path / "gpt2"))["id"]
    classifier = upload_model_dir(client, auth, tiny_teacher_dir)["id"]

    for model, said in ((plain_lm, "no chat template"), (classifier, "sequence-classification")):
        for stream in (False, True):
            response = client.post(f"/v1/models/{model}/predict", headers=auth,
                                   json={"messages": [USER], "stream": stream})
            error = assert_error(response, 400, code="no_chat_template", param="messages")
            assert said in error["message"]
