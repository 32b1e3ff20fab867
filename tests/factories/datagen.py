"""A tiny chat teacher that writes words and stops, for the teacher-written data tests."""

from __future__ import annotations

from pathlib import Path

from tests.factories.lm import WORDS, save_chat_llama


def save_stopping_llama(out: Path) -> Path:
    """`save_chat_llama` with its output rows biased (an untied head) towards the toy words and
    the end of turn, so that a random model's replies are words that mostly end within a
    32-token budget: about half of them are kept at temperature 1."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillation.data.generated import request_messages

    save_chat_llama(out, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    text = tokenizer.apply_chat_template(request_messages("Copy.", ["copy red cat"]),
                                         tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    vocabulary = {*WORDS, "copy", "the", "a"}
    word_ids = {i for token, i in tokenizer.get_vocab().items()
                if tokenizer.convert_tokens_to_string([token]).strip() in vocabulary}
    with torch.no_grad():
        # The mean direction of the last hidden states: a row along it scores high everywhere.
        direction = model.model(ids).last_hidden_state[0].mean(0)
        direction /= direction.norm()
        head = model.lm_head.weight
        for i in range(head.shape[0]):
            if i == tokenizer.eos_token_id:
                head[i] = 2.2 * direction
            elif i in word_ids:
                head[i] += 2 * direction
            else:
                head[i] = -3 * direction
    model.save_pretrained(out)
    return out
