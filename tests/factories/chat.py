"""A tiny chat model that writes words: `save_chat_llama` trained a few dozen steps on the copy
task as chat (untrained, it repeats the last token of its prompt, a newline, forever)."""

from __future__ import annotations

from pathlib import Path

from tests.factories.lm import chat_records, save_chat_llama


def save_trained_chat_llama(out: Path, *, steps: int = 60) -> Path:
    """`save_chat_llama(out)`, then `steps` AdamW steps (batches of 16) on `chat_records(64)`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distillation.tasks.causal_lm import encode_causal
    from distillation.tasks.token_data import TokenCollator, TokenColumns

    save_chat_llama(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    rows = encode_causal(chat_records(64), TokenColumns(messages="messages"), tokenizer,
                         max_length=48)
    collate = TokenCollator(tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(out)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(steps):
        start = (step * 16) % len(rows)
        batch = collate(rows[start : start + 16])
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out, safe_serialization=True)
    return out
