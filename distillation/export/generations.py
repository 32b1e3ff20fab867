"""What a language-model student writes next to what its teacher writes: the report's and the
card's generation section for `causal-lm` jobs.

On the evaluation prompts (the ids before each example's final answer), both models answer by
greedy decoding with the KV cache. The section holds: a few answers side by side; ROUGE-L
(rouge-score's F-measure of the longest common subsequence, 0–100) of the student's answer
against the teacher's; the share of prompts where the first line of both answers is the same
(after stripping spaces and case: for a narrow task, the answer itself, e.g. "positive"); the
student's perplexity on the teacher's answers (how likely the student finds what its teacher
says, teacher-forced); and generation speed, new tokens per second at batch 1 and batch 8, of
both models on this machine's CPU (a fixed number of new tokens, so both write as much).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from distillation.training.generation import (
    Decoding,
    generate_answers,
    left_padded,
    pad_id_of,
)

# Answers shown side by side in the card (the report keeps up to EXAMPLES_KEPT).
CARD_EXAMPLES = 5
EXAMPLES_KEPT = 64  # every prompt the engine asks about (GENERATION_PROMPTS)
SPEED_NEW_TOKENS = 32
SPEED_BATCHES = (1, 8)


def greedy_answers(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]], *, max_new_tokens: int, device: torch.device,
    batch_size: int = 8, on_batch: Callable[[], None] | None = None,
) -> list[list[int]]:
    """Each prompt's greedy answer (token ids, up to and without the end-of-sequence token).

    Prompts are batched by length (left-padded), so a batch wastes little on padding."""
    eos, pad = tokenizer.eos_token_id, pad_id_of(tokenizer)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers: list[list[int]] = [[] for _ in prompts]
    decoding = Decoding(max_new_tokens=max_new_tokens)
    for start in range(0, len(order), batch_size):
        if on_batch is not None:
            on_batch()
        chunk = order[start:start + batch_size]
        written = generate_answers(model, [prompts[i] for i in chunk], decoding, eos_id=eos,
                                   pad_id=pad, device=device).answers
        for index, answer in zip(chunk, written, strict=True):
            answers[index] = answer[:-1] if answer and answer[-1] == eos else answer
    return answers


@torch.inference_mode()
def answer_perplexity(
    model: PreTrainedModel, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
    *, eos_id: int | None, pad_id: int, device: torch.device, batch_size: int = 8,
) -> float:
    """exp(mean NLL) of `model` on each answer (and its end-of-sequence token) after its prompt."""
    model.eval()
    total, count = 0.0, 0
    pairs = [(list(p), [*a, eos_id] if eos_id is not None else list(a))
             for p, a in zip(prompts, answers, strict=True)]
    pairs = [(p, a) for p, a in pairs if p and a]
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        width = max(len(p) + len(a) for p, a in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for row, (p, a) in enumerate(chunk):
            seq = p + a
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
            labels[row, len(p): len(seq)] = torch.tensor(a)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                       use_cache=False).logits.float()
        targets = labels[:, 1:].to(device)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                               targets.reshape(-1), ignore_index=-100, reduction="sum")
        total += float(loss)
        count += int((targets != -100).sum())
    return math.exp(min(total / max(1, count), 700.0))


@torch.inference_mode()
def generation_speed(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                     prompt: Sequence[int], *, device: torch.device,
                     new_tokens: int = SPEED_NEW_TOKENS) -> dict[str, float]:
    """New tokens per second writing exactly `new_tokens` after `prompt`, at batch 1 and 8
    (median of 3 timed runs after one warm-up)."""
    model.eval()
    pad = pad_id_of(tokenizer)
    speed: dict[str, float] = {}
    for batch in SPEED_BATCHES:
        ids, mask = (t.to(device) for t in left_padded([prompt] * batch, pad))

        def run(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> None:
            model.generate(  # type: ignore[operator]
                input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, do_sample=False, use_cache=True, pad_token_id=pad)

        run()
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            run()
            timings.append(time.perf_counter() - started)
        speed[f"tokens_per_s_batch{batch}"] = round(batch * new_tokens / sorted(timings)[1], 1)
    return speed


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " ".join(lines[0].lower().split()) if lines else ""


def compare_generations(
    teacher: PreTrainedModel, student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]], *, max_new_tokens: int, device: torch.device,
    on_batch: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """The report's `generations` section (see the module notes) on `prompts` (token ids)."""
    from rouge_score import rouge_scorer

    prompts = [list(p) for p in prompts if p]
    if not prompts:
        return {}
    teacher_ids = greedy_answers(teacher, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                 device=device, on_batch=on_batch)
    student_ids = greedy_answers(student, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                 device=device, on_batch=on_batch)
    teacher_text = [str(tokenizer.decode(ids, skip_special_tokens=True)).strip()
                    for ids in teacher_ids]
    student_text = [str(tokenizer.decode(ids, skip_special_tokens=True)).strip()
                    for ids in student_ids]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [scorer.score(t, s)["rougeL"].fmeasure for t, s in zip(teacher_text, student_text,
                                                                   strict=True)]
    same_first = [_first_line(t) == _first_line(s) and _first_line(t) != ""
                  for t, s in zip(teacher_text, student_text, strict=True)]
    ppl = answer_perplexity(student, prompts, teacher_ids, eos_id=tokenizer.eos_token_id,
                            pad_id=pad_id_of(tokenizer), device=device)
    speed_prompt = prompts[len(prompts) // 2]
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "rougeL_vs_teacher": round(100.0 * sum(rouge) / len(rouge), 2),
        "first_line_match": round(sum(same_first) / len(same_first), 4),
        "student_perplexity_on_teacher": round(ppl, 4),
        "speed": {"teacher": generation_speed(teacher, tokenizer, speed_prompt, device=device),
                  "student": generation_speed(student, tokenizer, speed_prompt, device=device),
                  "new_tokens": SPEED_NEW_TOKENS, "device": device.type},
        "examples": [
            {"prompt": str(tokenizer.decode(list(p), skip_special_tokens=True)).strip(),
             "teacher": t, "student": s}
            for p, t, s in list(zip(prompts, teacher_text, student_text, strict=True))[
                :EXAMPLES_KEPT]],
    }


def _cell(text: str, limit: int = 120, *, tail: bool = False) -> str:
    """One table cell: on one line, at most `limit` characters (the end of it when `tail`: a
    prompt's end is its question, after any system turn)."""
    text = " ".join(text.split()).replace("|", "\\|")
    if len(text) <= limit:
        return text
    return "…" + text[1 - limit:] if tail else text[: limit - 1] + "…"


def generations_section(report: dict[str, Any], prompt_text: Callable[[str], str] | None = None
                        ) -> str:
    """The card's "Generations" section ("" when the report has none)."""
    gen = report.get("generations")
    if not gen:
        return ""
    show = prompt_text or (lambda p: p)
    rows = "\n".join(f"| {_cell(show(e['prompt']), tail=True)} | {_cell(e['teacher'])} | "
                     f"{_cell(e['student'])} |" for e in gen["examples"][:CARD_EXAMPLES])
    t, s = gen["speed"]["teacher"], gen["speed"]["student"]
    return f"""
## Generations

On {gen['prompts']} evaluation prompts, greedy decoding (at most {gen['max_new_tokens']} new
tokens): ROUGE-L of the student's answer against the teacher's **{gen['rougeL_vs_teacher']:.1f}**,
first line the same as the teacher's in **{gen['first_line_match']:.1%}** of answers, the
student's perplexity on the teacher's answers **{gen['student_perplexity_on_teacher']:.2f}**.

| Prompt | Teacher | Student |
|---|---|---|
{rows}

Generation speed on {gen['speed']['device']} ({gen['speed']['new_tokens']} new tokens): teacher
{t['tokens_per_s_batch1']:.0f} tokens/s at batch 1, {t['tokens_per_s_batch8']:.0f} at batch 8;
student {s['tokens_per_s_batch1']:.0f} and {s['tokens_per_s_batch8']:.0f}.
"""
