"""Teacher-written data: the cleaning as a pure function, the examples and requests, and the
`generate_data` stage on a seeded tiny chat Llama (its prompts are gibberish: what is tested is
the mechanics: counts, the prompt-only examples, the bound on replies, resume, the generated set
and the engine's wiring)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from distillation.config import Cancelled, DataGenerationSpec, DataSpec, Hyperparameters
from distillation.data.generated import (
    COPIES_EXAMPLE,
    DEGENERATE,
    DUPLICATE,
    EMPTY,
    NEAR_DUPLICATE,
    TOO_LONG,
    Examples,
    draw_shots,
    filter_prompts,
    jaccard,
    normalise,
    read_examples,
    request_messages,
    shingles,
    tidy_reply,
)
from distillation.engine import run_job
from distillation.layout import generated_prompts_path
from distillation.training.prompt_writer import (
    encode_prompt,
    prompt_features,
    save_generated_set,
    write_prompts,
)
from tests.factories.datagen import save_stopping_llama
from tests.factories.jobs import toy_job
from tests.factories.lm import copy_records, save_gpt2
from tests.factories.records import write_jsonl
from tests.factories.reporting import RecordingReporter

CPU = torch.device("cpu")
REVIEW = "Is this review positive or negative?"
EXAMPLES = [f"{REVIEW} The acting was superb.", f"{REVIEW} I walked out after an hour.",
            f"{REVIEW} A sweet, slow film about two sisters.", f"{REVIEW} Too loud and too long.",
            f"{REVIEW} The music alone is worth the ticket."]


def words(text: str) -> int:
    """A stand-in for a tokenizer in the pure tests: one token per word."""
    return len(text.split())


# -- cleaning, a pure function ---------------------------------------------------------------------


def test_the_filter_gives_every_dropped_prompt_its_reason() -> None:
    # Given prompts a teacher might write, each bad in one way, and two good ones
    written = [
        f"{REVIEW} The plot dragged on and on forever.",  # kept
        f"{REVIEW.lower()}  the plot dragged on and on forever!",  # the first, normalised
        f"{REVIEW} The plot dragged on and on for ever.",  # the first, one space apart
        f"{REVIEW} The acting was superb.",  # an example, as it is
        f'"{REVIEW} The acting was SUPERB!"',  # an example, normalised
        f"{REVIEW} The music alone is worth the tickets.",  # an example, nearly
        f"{REVIEW} " + "An endless, rambling, unfocused " * 6 + "film.",  # over the budget
        "",
        " ?! … ",
        "the film the film the film the film the film the film",  # a repetition loop
        f"{REVIEW} A charming, funny little film.",  # kept
    ]

    # When they are cleaned against the examples with a budget of 30 tokens
    result = filter_prompts(written, [words(p) for p in written], EXAMPLES, max_tokens=30)

    # Then each has its verdict, in order, and the counts add up
    assert result.verdicts == [None, DUPLICATE, NEAR_DUPLICATE, COPIES_EXAMPLE, COPIES_EXAMPLE,
                               COPIES_EXAMPLE, TOO_LONG, EMPTY, EMPTY, DEGENERATE, None]
    assert result.kept == [written[0], written[-1]]
    assert result.dropped == {DUPLICATE: 1, NEAR_DUPLICATE: 1, COPIES_EXAMPLE: 3, TOO_LONG: 1,
                              EMPTY: 2, DEGENERATE: 1}


def test_the_near_duplicate_threshold_separates_one_changed_word_from_two() -> None:
    base = normalise(f"{REVIEW} The plot dragged on and on forever.")
    one = normalise(f"{REVIEW} The plot moved on and on forever.")
    two = normalise(f"{REVIEW} The story moved on and on forever.")

    assert jaccard(shingles(base), shingles(one)) == pytest.approx(0.812, abs=1e-3)
    assert jaccard(shingles(base), shingles(two)) == pytest.approx(0.671, abs=1e-3)
    kept = filter_prompts([base, one, two], [1, 1, 1], EXAMPLES, max_tokens=30).verdicts
    assert kept == [None, NEAR_DUPLICATE, None]


def test_a_prompt_cut_off_by_the_budget_is_too_long_whatever_its_text() -> None:
    result = filter_prompts(["fine words"], [31], EXAMPLES, max_tokens=30)
    assert result.verdicts == [TOO_LONG] and result.kept == []


@pytest.mark.parametrize(("reply", "prompt"), [
    ("  Example 6: Is it good?\n", "Is it good?"),
    ('New example: "Is it good?"', "Is it good?"),
    ("\u201cIs it good?\u201d", "Is it good?"),
    ("Is it\x02 good?\x0c", "Is it good?"),
    ("Example 2 - 'ok'", "ok"),
    ("An example of a thing: this stays", "An example of a thing: this stays"),
])
def test_a_reply_is_tidied_into_the_prompt(reply: str, prompt: str) -> None:
    assert tidy_reply(reply) == prompt


# -- examples and requests ---------------------------------------------------------------------------


def test_examples_are_the_last_user_turns_with_the_system_turn_they_share() -> None:
    chat = [{"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": f"hi {n}"},
                          {"role": "assistant", "content": "hello"},
                          {"role": "user", "content": f" question {n} "}]} for n in range(5)]
    examples = read_examples([*chat, chat[0]], DataSpec())
    assert examples == Examples(prompts=[f"question {n}" for n in range(5)], system="Be brief.")

    mixed = read_examples([{"prompt": "a b", "completion": "b"}, *chat[:4]], DataSpec())
    assert mixed.system is None and mixed.prompts[0] == "a b"


@pytest.mark.parametrize(("records", "message"), [
    (copy_records(4), "4 distinct example prompt(s)"),
    ([*copy_records(5), {"text": "plain"}], "record 6 has neither `messages` nor"),
    ([*copy_records(5), {"messages": [{"role": "assistant", "content": "x"}]}],
     "record 6 has no user turn"),
    ([{"messages": "not a list"}, *copy_records(5)], "record 1: `messages` must be a list"),
])
def test_examples_that_cannot_serve_are_refused(records: list[dict[str, Any]],
                                                 message: str) -> None:
    with pytest.raises(ValueError, match=r"^examples\.jsonl[: ]") as error:
        read_examples(records, DataSpec(), name="examples.jsonl")
    assert message in str(error.value)


def test_each_request_draws_its_examples_from_the_seed_and_its_number_only() -> None:
    prompts = [f"p{n}" for n in range(10)]
    first = [draw_shots(prompts, seed=3, index=i) for i in range(6)]
    again = [draw_shots(prompts, seed=3, index=i) for i in reversed(range(6))][::-1]
    assert first == again
    assert all(len(set(shots)) == 3 for shots in first)
    assert len({tuple(shots) for shots in first}) > 1
    assert draw_shots(prompts, seed=4, index=0) != first[0] or \
        draw_shots(prompts, seed=4, index=1) != first[1]

    # The shots are the teacher's own earlier answers to the ask it gets once more
    request = request_messages("Sort the words.", first[0])
    assert [m["role"] for m in request] == ["system", *["user", "assistant"] * 3, "user"]
    assert "Sort the words." in request[0]["content"]
    assert [m["content"] for m in request if m["role"] == "assistant"] == first[0]
    assert request[-1] == request[-3]


# -- the stage on a tiny chat Llama -----------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_stopping_llama(tmp_path_factory.mktemp("stopping_llama"))


@pytest.fixture(scope="module")
def teacher(teacher_dir: Path) -> tuple[PreTrainedModel, Any]:
    return (AutoModelForCausalLM.from_pretrained(teacher_dir).eval(),
            AutoTokenizer.from_pretrained(teacher_dir))


EXAMPLE_SET = read_examples(copy_records(8, seed=5), DataSpec())


def spec(num_samples: int = 8, temperature: float = 1.0) -> DataGenerationSpec:
    return DataGenerationSpec("Copy the words after 'copy'.", Path("examples.jsonl"),
                              num_samples, temperature)


class CountingGenerate:
    """Wraps a model's `generate`, counting the replies asked of it."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.inner: Any = model.generate
        self.replies = 0

    def __call__(self, **kwargs: Any) -> Any:
        self.replies += int(kwargs["input_ids"].shape[0])
        return self.inner(**kwargs)


def write(teacher: tuple[PreTrainedModel, Any], work: Path, reporter: RecordingReporter,
          **changes: Any) -> Any:
    model, tokenizer = teacher
    return write_prompts(model, tokenizer, changes.pop("spec", spec()), EXAMPLE_SET,
                         max_length=changes.pop("max_length", 64), seed=1, work_dir=work,
                         device=CPU, reporter=reporter, batch_size=4, **changes)


def test_the_teacher_writes_num_samples_prompt_only_examples(
    teacher: tuple[PreTrainedModel, Any], tmp_path: Path,
) -> None:
    reporter = RecordingReporter()
    written = write(teacher, tmp_path, reporter)

    s = written.summary
    assert s["kept"] == s["requested"] == 8 == len(written.prompts) == len(written.features)
    assert s["written"] == s["kept"] + sum(s["dropped"].values())
    assert 8 < s["written"] <= s["max_replies"] == 24  # some were dropped, within the bound
    assert s["max_prompt_tokens"] == 32
    # The kept prompts are distinct, none an example, each a prompt without an answer yet
    assert len({normalise(p) for p in written.prompts}) == 8
    assert not set(written.prompts) & set(EXAMPLE_SET.prompts)
    tokenizer = teacher[1]
    for prompt, row in zip(written.prompts, written.features, strict=True):
        assert row == prompt_features(encode_prompt(tokenizer, prompt, None))
        assert len(row["input_ids"]) == row["prompt_length"] <= 32
        assert set(row["labels"]) == {-100}
        assert tokenizer.decode(row["input_ids"]).endswith("<|im_start|>assistant\n")
    # Every reply is stored, in the order written
    stored = json.loads(generated_prompts_path(tmp_path).read_text())
    assert len(stored["replies"]) == s["written"]
    assert [p.stage for p in reporter.progress_events] == ["generate_data"] * len(
        reporter.progress_events)
    assert reporter.progress_events[-1].percent == 100.0
    assert "kept 8" in written.message() and "Stopped" not in written.message()


def test_it_stops_after_three_replies_per_prompt_asked_for(
    teacher: tuple[PreTrainedModel, Any], tmp_path: Path,
) -> None:
    # A budget of 4 tokens: a chat-formatted prompt alone takes more, so nothing can be kept
    written = write(teacher, tmp_path, RecordingReporter(), spec=spec(num_samples=5),
                    max_length=8)

    assert written.summary["written"] == 15 == written.summary["max_replies"]
    assert written.summary["kept"] == 0 and written.prompts == []
    assert written.summary["dropped"][TOO_LONG] + written.summary["dropped"][EMPTY] == 15
    assert "Stopped after 15 replies (at most 15) with 0 of the 5 prompts" in written.message()


def test_a_stopped_run_resumes_from_the_replies_it_stored(
    teacher: tuple[PreTrainedModel, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = teacher[0]
    # Given the prompts of a run that was never interrupted
    whole = write(teacher, tmp_path / "whole", RecordingReporter())

    # When another run of the same job is stopped after its first batch of 4
    counting = CountingGenerate(model)
    monkeypatch.setattr(model, "generate", counting)
    with pytest.raises(Cancelled):
        write(teacher, tmp_path / "job", RecordingReporter(stop_after=1))
    assert counting.replies == 4
    assert len(json.loads(generated_prompts_path(tmp_path / "job").read_text())["replies"]) == 4

    # and the next attempt goes on
    reporter = RecordingReporter()
    resumed = write(teacher, tmp_path / "job", reporter)

    # Then it asked the teacher only for what was missing, and kept what the whole run kept
    assert counting.replies == whole.summary["written"]
    assert reporter.messages[0] == ("Reusing the 4 prompts the teacher wrote in an earlier "
                                    "attempt of this job.")
    assert resumed.prompts == whole.prompts
    assert resumed.summary == whole.summary


def test_replies_written_for_another_request_are_not_reused(
    teacher: tuple[PreTrainedModel, Any], tmp_path: Path,
) -> None:
    write(teacher, tmp_path, RecordingReporter(), spec=spec(num_samples=2))
    reporter = RecordingReporter()
    write(teacher, tmp_path, reporter, spec=spec(num_samples=2, temperature=0.7))
    assert not any(m.startswith("Reusing") for m in reporter.messages)


def test_the_generated_set_holds_each_prompt_with_the_answers_found_for_it(
    teacher: tuple[PreTrainedModel, Any], tmp_path: Path,
) -> None:
    tokenizer = teacher[1]
    written = write(teacher, tmp_path, RecordingReporter(), spec=spec(num_samples=3))
    first, second, third = written.features
    answer = tokenizer("red cat", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    # The first prompt answered twice (two samples), the second not at all, the third once
    features = [prompt_features([5, 6, 7]),  # another prompt's example: not in the set
                {**first, "input_ids": first["input_ids"] + answer},
                {**first, "input_ids": first["input_ids"] + answer[1:]}, second,
                {**third, "input_ids": third["input_ids"] + answer}]

    path = save_generated_set(tmp_path / "generated.jsonl", written, features, tokenizer)

    assert path is not None
    records = [json.loads(line) for line in path.read_text().splitlines()]
    p1, p2, p3 = written.prompts
    user = [{"role": "user", "content": p} for p in (p1, p2, p3)]
    assert records == [
        {"messages": [user[0], {"role": "assistant", "content": "red cat"}]},
        {"messages": [user[0], {"role": "assistant", "content": tokenizer.decode(
            answer[1:-1]).strip()}]},
        {"messages": [user[1]]},
        {"messages": [user[2], {"role": "assistant", "content": "red cat"}]},
    ]


# -- the engine --------------------------------------------------------------------------------


def test_run_job_writes_prompts_first_and_trains_on_them(teacher_dir: Path,
                                                         tmp_path: Path) -> None:
    examples = write_jsonl(tmp_path / "examples.jsonl", copy_records(8, seed=5))
    config = toy_job(teacher_dir, tmp_path / "job", copy_records(16), task="causal-lm",
                     hyperparameters=Hyperparameters(epochs=1, batch_size=8, max_steps=2),
                     data=DataSpec(max_seq_length=64),
                     data_generation=DataGenerationSpec("Copy the words after 'copy'.",
                                                        examples, 4, 1.0),
                     generated_file=tmp_path / "job" / "work" / "generated.jsonl")
    reporter = RecordingReporter()

    result = run_job(config, reporter)

    summary = result.report["data_generation"]
    assert summary["kept"] == 4 and summary["written"] >= 4
    assert result.report["training_examples"] == {
        "labelled": 16, "generated": 4, "file answers": 16, "teacher answers": 4}
    assert "generate_data" in result.report["stage_seconds"]
    told = [data for text, data in reporter.events
            if text.startswith("The teacher wrote") and "data_generation" in (data or {})]
    assert told == [{"data_generation": summary}]
    stages = reporter.stages()
    assert stages.index("generate_data") < stages.index("distill")
    assert result.generated_file is not None and result.generated_file == config.generated_file
    records = [json.loads(line) for line in result.generated_file.read_text().splitlines()]
    assert len(records) == 4
    # Each written prompt with the answer the teacher wrote to it (the generate stage).
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in records)


def test_run_job_refuses_data_generation_it_cannot_do(tmp_path: Path) -> None:
    examples = write_jsonl(tmp_path / "examples.jsonl", copy_records(8))
    no_template = save_gpt2(tmp_path / "gpt2")  # a tokenizer without a chat template
    config = toy_job(no_template, tmp_path / "job", copy_records(8), task="causal-lm",
                     hyperparameters=Hyperparameters(epochs=1, batch_size=8),
                     data_generation=DataGenerationSpec("Copy.", examples, 4))
    with pytest.raises(ValueError, match="no chat template"):
        run_job(config, RecordingReporter())
