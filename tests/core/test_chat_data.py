"""Chat records for causal-LM jobs: the chat template applied, the loss on assistant turns only
(their content and closing `<|im_end|>`), `prompt_length` before the final answer, prompts with
no answer kept for the teacher to answer, truncation from the prompt's start, the rules a
conversation follows, and a token-level job that trains on chat records (or says why it cannot)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from distillation.config import DataSpec, Hyperparameters
from distillation.data.chat import conversation_problem
from distillation.data.chat_template import encode_conversation, render
from distillation.data.records import RecordError, scan
from distillation.engine import run_job
from distillation.models.files import has_chat_template
from distillation.tasks import CAUSAL_LM
from distillation.tasks.causal_lm import causal_columns, encode_causal
from distillation.tasks.token_data import IGNORE_INDEX, TokenCollator, unanswered
from tests.factories.jobs import toy_job
from tests.factories.lm import chat_records, chat_tokenizer, lm_tokenizer, save_chat_llama
from tests.factories.reporting import RecordingReporter

SYSTEM = {"role": "system", "content": "copy the words"}


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return chat_tokenizer()


def _learnt_runs(tokenizer: Any, ids: list[int], labels: list[int]) -> list[str]:
    """The decoded runs of consecutive learnt tokens, in order."""
    runs: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                runs.append([])
            runs[-1].append(token)
        previous = label
    return [tokenizer.decode(run) for run in runs]


def _encode(tokenizer: Any, records: list[dict[str, Any]], max_length: int = 128) -> list[Any]:
    return encode_causal(records, causal_columns(DataSpec(), ["messages"]), tokenizer,
                         max_length=max_length)


def test_one_turn_learns_the_answer_and_its_end_of_turn_token(tokenizer: Any) -> None:
    messages = [_user("copy red cat"), _assistant("red cat")]

    row = _encode(tokenizer, [{"messages": messages}])[0]

    assert _learnt_runs(tokenizer, row["input_ids"], row["labels"]) == ["red cat<|im_end|>"]
    # The prompt is the conversation before the answer, with the generation prompt
    prompt = render(tokenizer, messages[:1], generation_prompt=True)
    assert prompt == "<|im_start|>user\ncopy red cat<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(row["input_ids"][: row["prompt_length"]]) == prompt
    assert row["input_ids"][: row["prompt_length"]] == tokenizer(
        prompt, add_special_tokens=False)["input_ids"]
    # The whole example is the template's text up to the closing <|im_end|>
    full = render(tokenizer, messages, generation_prompt=False)
    assert tokenizer.decode(row["input_ids"]) == full.removesuffix("\n")
    assert row["labels"][: row["prompt_length"]] == [IGNORE_INDEX] * row["prompt_length"]


def test_multi_turn_with_a_system_turn_learns_every_assistant_turn_and_nothing_else(
    tokenizer: Any,
) -> None:
    messages = [SYSTEM, _user("copy red cat"), _assistant("red cat"), _user("copy sun moon"),
                _assistant("sun moon")]

    encoded = encode_conversation(tokenizer, messages)

    assert _learnt_runs(tokenizer, encoded.input_ids, encoded.labels) == [
        "red cat<|im_end|>", "sun moon<|im_end|>"]
    # The final answer starts where the prompt (every earlier turn, learnt ones too) ends
    prompt = render(tokenizer, messages[:-1], generation_prompt=True)
    assert tokenizer.decode(encoded.input_ids[: encoded.prompt_length]) == prompt
    assert tokenizer.decode(encoded.input_ids[encoded.prompt_length:]) == "sun moon<|im_end|>"
    # The system and user turns, their role headers and the newlines between turns carry no loss
    masked = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True)
              if label == IGNORE_INDEX]
    assert tokenizer.decode(masked).count("<|im_start|>") == 5
    assert "copy the words" in tokenizer.decode(masked)


def test_a_conversation_ending_with_the_user_is_a_prompt_with_no_answer(tokenizer: Any) -> None:
    messages = [SYSTEM, _user("copy red cat"), _assistant("red cat"), _user("copy sun")]

    row = _encode(tokenizer, [{"messages": messages}])[0]

    prompt = render(tokenizer, messages, generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\ncopy sun<|im_end|>\n<|im_start|>assistant\n")
    assert row["input_ids"] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(row["input_ids"]) == row["prompt_length"]
    assert set(row["labels"]) == {IGNORE_INDEX}  # its earlier answer too: nothing is learnt
    assert unanswered([row]) == [0]


def test_prompts_with_an_empty_or_missing_completion_are_kept_unanswered() -> None:
    tokenizer = lm_tokenizer()
    records = [{"prompt": "copy red cat", "completion": "red cat"},
               {"prompt": "copy sun", "completion": ""}, {"prompt": "copy moon"}]
    columns = causal_columns(DataSpec(), ["prompt", "completion"])

    rows = encode_causal(records, columns, tokenizer, max_length=32)

    prompt = tokenizer("copy red cat")["input_ids"]
    assert rows[0]["prompt_length"] == len(prompt) and rows[0]["input_ids"][: len(prompt)] == prompt
    for row, text in zip(rows[1:], ["copy sun", "copy moon"], strict=True):
        assert row["input_ids"] == tokenizer(text)["input_ids"]
        assert len(row["input_ids"]) == row["prompt_length"]
        assert set(row["labels"]) == {IGNORE_INDEX}
    assert unanswered(rows) == [1, 2]
    # A file of prompts alone is read as prompt + (missing) completion, not as text
    assert causal_columns(DataSpec(), ["prompt"]).prompt == "prompt"


def test_a_text_example_has_no_prompt() -> None:
    tokenizer = lm_tokenizer()

    row = encode_causal([{"text": "one two three"}], causal_columns(DataSpec(), ["text"]),
                        tokenizer, max_length=32)[0]

    assert row["prompt_length"] == 0 and unanswered([row]) == []


def test_too_long_a_conversation_keeps_its_answer_and_the_end_of_its_prompt(
    tokenizer: Any,
) -> None:
    long_system = {"role": "system", "content": " ".join(["red"] * 60)}
    messages = [long_system, _user("copy blue cat"), _assistant("blue cat")]
    whole = encode_conversation(tokenizer, messages)
    assert len(whole.input_ids) > 32

    row = _encode(tokenizer, [{"messages": messages}], max_length=32)[0]

    answer = whole.input_ids[whole.prompt_length:]
    assert len(row["input_ids"]) == 32
    assert row["input_ids"][-len(answer):] == answer == row["labels"][-len(answer):]
    assert row["prompt_length"] == 32 - len(answer)
    # The prompt lost its start, not its end
    assert row["input_ids"][: row["prompt_length"]] == whole.input_ids[
        whole.prompt_length - row["prompt_length"] : whole.prompt_length]
    assert tokenizer.decode(row["input_ids"]).endswith(
        "copy blue cat<|im_end|>\n<|im_start|>assistant\nblue cat<|im_end|>")
    # A prompt with no answer keeps at most half the budget, for the answer to come
    prompt_only = _encode(tokenizer, [{"messages": messages[:2]}], max_length=32)[0]
    assert len(prompt_only["input_ids"]) == prompt_only["prompt_length"] == 16
    assert tokenizer.decode(prompt_only["input_ids"]).endswith("<|im_start|>assistant\n")


def test_a_batch_carries_the_prompt_lengths(tokenizer: Any) -> None:
    rows = _encode(tokenizer, chat_records(2) + chat_records(1, seed=3, answered=False))

    batch = TokenCollator(tokenizer.pad_token_id)(rows)

    assert batch["prompt_length"].tolist() == [row["prompt_length"] for row in rows]
    assert batch["prompt_length"].dtype == torch.long


def test_a_tokenizer_without_a_chat_template_is_refused() -> None:
    tokenizer = chat_tokenizer()
    tokenizer.chat_template = None

    with pytest.raises(ValueError, match="no chat template"):
        _encode(tokenizer, chat_records(1))


def test_a_template_that_renders_the_last_turn_apart_is_refused() -> None:
    # A template that marks the conversation's last turn: its prefixes are not the start of the
    # whole, so where the assistant turns are cannot be found by rendering prefixes
    tokenizer = chat_tokenizer()
    tokenizer.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
        "{% if loop.last %} (last){% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

    with pytest.raises(ValueError, match=r"record 1: the chat template renders messages\[:1\]"):
        _encode(tokenizer, [{"messages": [_user("copy red"), _assistant("red")]}])


@pytest.mark.parametrize(("messages", "where", "said"), [
    ("copy red", "messages", "must be a list"),
    ([], "messages", "is empty"),
    (["copy red"], "messages[0]", "must be an object"),
    ([{"role": "tool", "content": "x"}], "messages[0].role", "got 'tool'"),
    ([{"content": "x"}], "messages[0].role", "missing"),
    ([_user("copy"), {"role": "assistant", "content": 5}], "messages[1].content",
     "must be a string, got 5"),
    ([_user("copy"), {"role": "assistant"}], "messages[1].content", "missing"),
    ([_user("  ")], "messages[0].content", "is empty"),
    ([SYSTEM], "messages", "no user turn"),
    ([SYSTEM, _assistant("hi"), _user("copy red")], "messages[1]", "before any user turn"),
])
def test_conversation_rules(messages: Any, where: str, said: str) -> None:
    problem = conversation_problem(messages)

    assert problem is not None and problem.where == where
    assert problem.message.startswith(where) and said in problem.message


def test_only_a_conversation_ending_with_the_user_is_answerable() -> None:
    assert conversation_problem([_user("copy red")], answerable=True) is None
    problem = conversation_problem([_user("copy red"), _assistant("red")], answerable=True)
    assert problem is not None and problem.where == "messages[1]"


@pytest.mark.parametrize(("lines", "line", "said"), [
    (['{"messages": [{"role": "user", "content": "a"}]}', "",
      '{"messages": [{"role": "tool", "content": "a"}]}'], 3, "messages[0].role"),
    (['{"messages": [{"role": "user", "content": "a"}]}', '{"text": "a"}'], 2,
     "chat records only or none"),
    (['{"text": "a"}', '{"messages": [{"role": "user", "content": "a"}]}'], 2,
     "chat records only or none"),
    (['{"messages": [{"role": "user", "content": "a"}]}', '{"messages": "a"}'], 2,
     "chat records only or none"),
    (['{"messages": [{"role": "user", "content": [{"type": "text"}]}]}'], 1,
     "'content' of item 0 must be a string"),
])
def test_a_file_check_names_the_line_of_a_bad_chat_record(lines: list[str], line: int,
                                                          said: str) -> None:
    data = ("\n".join(lines) + "\n").encode()

    with pytest.raises(RecordError) as caught:
        scan(io.BytesIO(data), filename="chat.jsonl")

    assert caught.value.line == line and said in str(caught.value)


def _chat_job(teacher: Path, tmp: Path, records: list[dict[str, Any]]) -> Any:
    hp = Hyperparameters(epochs=2, batch_size=8, learning_rate=5e-3, warmup_ratio=0.0,
                         log_every_steps=2, eval_batch_size=16)
    return toy_job(teacher, tmp, records, task=CAUSAL_LM, hyperparameters=hp,
                   data=DataSpec(max_seq_length=48))


@pytest.fixture(scope="module")
def chat_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_chat_llama(tmp_path_factory.mktemp("chat_llama"))


def test_a_token_job_trains_on_chat_records(chat_teacher: Path, tmp_path: Path) -> None:
    config = _chat_job(chat_teacher, tmp_path, chat_records(24, seed=1))
    reporter = RecordingReporter()

    result = run_job(config, reporter)

    losses = [m["train_loss"] for _, m in reporter.metric_events if "train_loss" in m]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert result.eval_metrics["eval_perplexity"] > 1.0
    # The student keeps its teacher's chat template, so predict can serve it messages
    assert has_chat_template(result.model_dir)


def test_a_token_job_has_the_teacher_answer_the_prompts_that_came_without_one(
    chat_teacher: Path, tmp_path: Path,
) -> None:
    records = chat_records(8, seed=1) + chat_records(3, seed=2, answered=False)
    config = _chat_job(chat_teacher, tmp_path, records)

    result = run_job(config, RecordingReporter())

    assert result.report["method"]["name"] == "token"
    assert result.report["method"]["teacher_answers"]["answers"] == 3
    # The report and the card set the two models' answers to the evaluation prompts side by side.
    generations = result.report["generations"]
    assert generations["prompts"] == len(result.report["generations"]["examples"]) > 0
    assert set(generations["speed"]) >= {"teacher", "student"}
    card = (result.model_dir / "README.md").read_text()
    assert "## Generations" in card and "| Prompt | Teacher | Student |" in card
