"""The memory estimate against what a tiny model really holds on the CPU: the parameter and
optimizer part exactly (after a real AdamW step), the activations within a factor of 2 of the
tensors autograd saves for backward."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from distillation.config import Hyperparameters
from distillation.students.memory import (
    activation_bytes,
    estimate_memory,
    format_bytes,
    model_size,
    training_state_bytes,
    weights_bytes,
)
from distillation.training.loop import make_optimizer


def bert(hidden: int = 64, layers: int = 2) -> BertConfig:
    return BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=4, intermediate_size=2 * hidden,
                      max_position_embeddings=128, num_labels=2)


def gpt2() -> GPT2Config:
    return GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                      bos_token_id=0, eos_token_id=0)


def _tensor_bytes(tensors: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def test_parameters_gradients_and_adamw_state_are_counted_exactly() -> None:
    # Given a tiny classifier (with tied-free BERT weights) after one real AdamW step
    config = bert()
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    optimizer, _ = make_optimizer([model], Hyperparameters(), learning_rate=1e-3, total_steps=1)
    batch = {"input_ids": torch.randint(0, 30522, (4, 16)), "labels": torch.tensor([0, 1, 0, 1])}
    model(**batch).loss.backward()
    optimizer.step()
    params = list(model.parameters())
    held = (_tensor_bytes(params) + _tensor_bytes(p.grad for p in params)
            + sum(_tensor_bytes(state.values()) for state in optimizer.state.values()))

    # Then the estimate, from the config alone on the meta device, is that number to the byte
    size = model_size(config, AutoModelForSequenceClassification)
    assert size.parameters == sum(p.numel() for p in params)
    assert training_state_bytes(size) == held
    assert weights_bytes(size) == _tensor_bytes(params)


def test_tied_weights_are_counted_once() -> None:
    size = model_size(gpt2(), AutoModelForCausalLM)
    model = GPT2LMHeadModel(gpt2())
    assert model.lm_head.weight is model.transformer.wte.weight
    assert size.parameters == sum(p.numel() for p in model.parameters())


def _saved_activation_bytes(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """Bytes of the tensors autograd keeps for backward (weights left out, storages once)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(**inputs).logits
        torch.log_softmax(logits, dim=-1).mean().backward()
    return sum(kept.values())


@pytest.mark.parametrize("task", ["sequence-classification", "causal-lm"])
def test_activations_are_within_a_factor_of_two_of_what_autograd_saves(task: str) -> None:
    config = bert() if task == "sequence-classification" else gpt2()
    model_class = BertForSequenceClassification if task == "sequence-classification" \
        else GPT2LMHeadModel
    torch.manual_seed(0)
    model = model_class(config).train()
    batch, length = 8, 64
    measured = _saved_activation_bytes(
        model, {"input_ids": torch.randint(0, config.vocab_size, (batch, length))})
    estimated = activation_bytes(config, task=task, batch=batch, length=length)
    assert 0.5 <= estimated / measured <= 2.0, (estimated, measured)


def test_the_estimate_splits_the_batch_over_devices_and_takes_the_finetuning_peak() -> None:
    teacher, student = bert(hidden=128, layers=4), bert(hidden=64, layers=1)
    one = estimate_memory(teacher, student, task="sequence-classification", batch_size=32,
                          max_length=128)
    two = estimate_memory(teacher, student, task="sequence-classification", batch_size=32,
                          max_length=128, devices=2)
    # Weights and optimizer state are whole on every device; activations follow the batch.
    assert two.teacher_weights == one.teacher_weights
    assert two.student_training == one.student_training
    assert two.batch_per_device == 16 and two.activations < one.activations
    assert one.total == one.distill == (one.teacher_weights + one.student_training
                                        + one.activations)
    # Fine-tuning trains the (bigger) teacher: its weights, gradients and AdamW state
    tuned = estimate_memory(teacher, student, task="sequence-classification", batch_size=32,
                            max_length=128, finetune_batch_size=32)
    teacher_size = model_size(teacher, AutoModelForSequenceClassification)
    assert tuned.finetune > training_state_bytes(teacher_size)
    assert tuned.total == max(tuned.distill, tuned.finetune) == tuned.finetune
    # Longer inputs cost more
    longer = estimate_memory(teacher, student, task="sequence-classification", batch_size=32,
                             max_length=256)
    assert longer.activations > 2 * one.activations
    assert format_bytes(3 * 1024**3 // 2) == "1.5 GiB"
