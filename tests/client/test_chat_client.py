"""The Python client asks a chat model with `messages`, and reads its answer streamed."""

from __future__ import annotations

from pathlib import Path

import pytest
from distill_client import AnswerStream, BadRequestError, Client

from tests.factories.chat import save_trained_chat_llama

CONVERSATION = [{"role": "system", "content": "copy the words"},
                {"role": "user", "content": "copy red cat"}]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_trained_chat_llama(tmp_path_factory.mktemp("chat") / "model")


def test_predict_answers_messages_and_streams_the_same_answer(dc: Client, chat_dir: Path) -> None:
    model = dc.models.register(chat_dir)

    answer = dc.models.predict(model.id, messages=CONVERSATION, max_new_tokens=6)
    with dc.models.predict(model.id, messages=CONVERSATION, max_new_tokens=6,
                           stream=True) as stream:
        pieces = list(stream)

    assert isinstance(stream, AnswerStream) and len(answer.data) == 1
    assert answer.data[0].text and "".join(pieces) == stream.text == answer.data[0].text
    assert stream.result is not None and stream.result.data[0].text == answer.data[0].text
    assert stream.result.usage is not None and 1 <= stream.result.usage.completion_tokens <= 6
    with pytest.raises(BadRequestError) as bad:
        dc.models.predict(model.id, messages=[{"role": "robot", "content": "hi"}])
    assert bad.value.param == "messages[0].role"
