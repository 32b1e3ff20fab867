"""A conversation through a tokenizer's chat template: token ids, the loss mask of its assistant
turns, and the length of the prompt before its final answer.

Templates such as SmolLM2's mark nothing (no `{% generation %}` blocks), so where each assistant
turn sits is found by rendering prefixes of the conversation: an assistant turn `i` starts where
`messages[:i]` rendered with the generation prompt ends, and the turn is learnt up to and
including the end-of-turn token that closes its content (`<|im_end|>`, `<|eot_id|>`,
`<end_of_turn>`: the first special token after it). The text around it (role headers, the other
turns, the newline after the end-of-turn token) carries no loss. Each piece is tokenised alone
and their concatenation must equal the whole conversation tokenised at once, so the mask is exact
for the ids the model reads; a template whose prefixes do not render as the conversation starts,
or whose turns do not fall on token boundaries, is a ValueError rather than a wrong mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from transformers import PreTrainedTokenizerBase

from distillation.data.chat import Message, is_prompt_only

IGNORE_INDEX = -100


@dataclass
class ChatEncoding:
    """One conversation, tokenised: labels are the ids of assistant turns, −100 elsewhere;
    `prompt_length` the tokens before the final answer (all of them when the last turn is the
    user's: a prompt with no answer yet, encoded with the generation prompt)."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int


def turns(messages: Sequence[Message]) -> list[dict[str, str]]:
    """The role and content of each turn (other fields are not given to the template)."""
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def render(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], *,
           generation_prompt: bool) -> str:
    """The conversation as the template writes it; ValueError when the tokenizer has no template
    or the template refuses the conversation (its own `raise_exception`)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the teacher's tokenizer has no chat template to render chat records "
                         "with; use a chat model, or prompt + completion records")
    try:
        text = tokenizer.apply_chat_template(turns(messages), tokenize=False,
                                             add_generation_prompt=generation_prompt)
    except Exception as exc:  # jinja2's TemplateError and whatever a template raises
        raise ValueError(f"the chat template refused the conversation: {exc}") from exc
    return str(text)


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    specials = set(tokenizer.all_special_tokens)
    specials.update(t.content for t in tokenizer.added_tokens_decoder.values() if t.special)
    return sorted(s for s in specials if s)


def _answer_end(answer: str, content: str, specials: Sequence[str]) -> int:
    """Where an assistant turn's text (from its start to the end of its rendering) stops being
    learnt: after the first special token that follows its content, else after its last
    non-blank character."""
    found = answer.find(content.strip())
    after = found + len(content.strip()) if found >= 0 else 0
    ends = [k + len(s) for s in specials if (k := answer.find(s, after)) >= 0]
    return min(ends) if ends else max(after, len(answer.rstrip()))


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def encode_conversation(tokenizer: PreTrainedTokenizerBase,
                        messages: Sequence[Message]) -> ChatEncoding:
    """Token ids, labels (assistant turns only) and prompt length of one checked conversation
    (see the module notes); not truncated."""
    prompt_only = is_prompt_only(messages)
    full = render(tokenizer, messages, generation_prompt=prompt_only)
    specials = _special_tokens(tokenizer)
    spans: list[tuple[int, int]] = []
    for i, turn in enumerate(messages):
        if turn["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True)
        through = render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError(
                f"the chat template renders messages[:{i}] (with the generation prompt) or "
                f"messages[:{i + 1}] otherwise than the start of the whole conversation, so its "
                "assistant turns cannot be told apart from the rest")
        spans.append((len(before), len(before) + _answer_end(through[len(before):],
                                                             str(turn["content"]), specials)))
    if prompt_only:
        prompt_end = len(full)
    else:
        prompt_end = spans[-1][0]
        full = full[: spans[-1][1]]  # what follows the final end-of-turn token predicts nothing
    bounds = sorted({0, prompt_end, len(full), *(x for span in spans for x in span)})
    learnt = {start for start, _ in spans}
    ids: list[int] = []
    labels: list[int] = []
    prompt_length = 0
    for start, end in pairwise(bounds):
        piece = _ids(tokenizer, full[start:end])
        ids += piece
        labels += piece if start in learnt else [IGNORE_INDEX] * len(piece)
        if end <= prompt_end:
            prompt_length = len(ids)
    if ids != _ids(tokenizer, full):
        raise ValueError("the chat template's turns do not fall on token boundaries of the "
                         "teacher's tokenizer (a token spans the end of one turn and the start of "
                         "the next), so the assistant turns cannot be masked exactly")
    return ChatEncoding(input_ids=ids, labels=labels, prompt_length=prompt_length)
