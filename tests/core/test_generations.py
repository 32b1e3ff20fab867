"""The generation section of a language-model report: answers side by side, agreement with the
teacher, perplexity on the teacher's answers, speed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from distillation.export.generations import (
    answer_perplexity,
    compare_generations,
    generations_section,
    greedy_answers,
)
from tests.factories.lm import chat_records, save_chat_llama

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def chat_pair(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("chat")
    teacher_dir = save_chat_llama(root / "teacher", seed=0)
    student_dir = save_chat_llama(root / "student", seed=1, num_hidden_layers=1)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    load = AutoModelForCausalLM.from_pretrained
    return load(teacher_dir), load(student_dir), tokenizer


def _prompts(tokenizer, n: int) -> list[list[int]]:
    return [tokenizer.apply_chat_template(r["messages"], add_generation_prompt=True,
                                          tokenize=True, return_dict=False)
            for r in chat_records(n, answered=False)]


def test_batched_greedy_answers_are_each_prompts_own_greedy_answer(chat_pair) -> None:
    teacher, _, tokenizer = chat_pair
    prompts = _prompts(tokenizer, 5)
    prompts[0] = prompts[0][:4]  # lengths differ: the batch is left-padded
    batched = greedy_answers(teacher, tokenizer, prompts, max_new_tokens=6, device=CPU,
                             batch_size=8)
    for prompt, answer in zip(prompts, batched, strict=True):
        alone = teacher.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        if tokenizer.eos_token_id in alone:
            alone = alone[: alone.index(tokenizer.eos_token_id)]
        assert answer == alone


def test_a_model_finds_its_own_greedy_answers_likelier_than_another_models(chat_pair) -> None:
    teacher, student, tokenizer = chat_pair
    prompts = _prompts(tokenizer, 6)
    answers = greedy_answers(teacher, tokenizer, prompts, max_new_tokens=6, device=CPU)
    kwargs = {"eos_id": None, "pad_id": tokenizer.pad_token_id, "device": CPU}
    own = answer_perplexity(teacher, prompts, answers, **kwargs)
    other = answer_perplexity(student, prompts, answers, **kwargs)
    assert 1.0 <= own < other


def test_a_student_identical_to_its_teacher_agrees_on_every_answer(chat_pair, tmp_path: Path) -> None:
    teacher, _, tokenizer = chat_pair
    section = compare_generations(teacher, teacher, tokenizer, _prompts(tokenizer, 4),
                                  max_new_tokens=5, device=CPU)
    assert section["rougeL_vs_teacher"] in (0.0, 100.0)  # empty answers score 0 against each other
    assert all(e["teacher"] == e["student"] for e in section["examples"])
    assert section["speed"]["teacher"]["tokens_per_s_batch8"] > 0
    card = generations_section({"generations": section})
    assert "| Prompt | Teacher | Student |" in card and card.count("\n| ") >= 5


def test_a_different_student_is_scored_against_the_teacher(chat_pair) -> None:
    teacher, student, tokenizer = chat_pair
    section = compare_generations(teacher, student, tokenizer, _prompts(tokenizer, 6),
                                  max_new_tokens=6, device=CPU)
    assert section["prompts"] == 6
    assert 0.0 <= section["rougeL_vs_teacher"] <= 100.0
    assert 0.0 <= section["first_line_match"] <= 1.0
    assert section["student_perplexity_on_teacher"] > 1.0
