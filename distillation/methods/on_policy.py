"""On-policy distillation (`method` "on-policy"): generalized knowledge distillation (GKD,
Agarwal et al., ICLR 2024).

A student trained only on the teacher's (or the file's) answers never sees its own mistakes:
at generation time it continues from prefixes it wrote itself, which no training example
looked like. GKD closes that gap: with probability λ (`on_policy.lambda_`) a batch's answers
are sampled from the student as it is at that step, and the teacher scores every token of them
(its distribution at each position of the student's answer, computed live: those answers did
not exist when the teacher cache could have been built); otherwise the batch keeps its answers
(the file's, or the teacher's for prompts that came without one: the `generate` stage).

The loss is the generalized Jensen–Shannon divergence JSD(β) between the teacher's and the
student's next-token distributions at `distillation.temperature`, over the answer tokens
(`losses.functions.JSDLoss`: β = 0 the forward KL, β = 1 the reverse KL), and it is a mean per
answer token over the whole gradient-accumulation group, not a mean of the batches' means: the
loop prepares the group's batches first (this is where the student samples, from the weights of
the last optimizer step) and weighs each batch's loss by its answer tokens (`loop.row_weights`).

Sampling: in eval mode, without gradients, with the KV cache (`training.generation`), at
`generation.temperature` when it is above 0, else at 1 (`config.ON_POLICY_SAMPLING_TEMPERATURE`:
the student's own distribution, as GKD samples it), nucleus `generation.top_p`, at most
`generation.max_new_tokens` tokens (and what the example has room for), stopping at the
end-of-sequence token. The coin for each batch is drawn from torch's generator, whose state the
checkpoints keep, so a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from distillation.config import ON_POLICY_SAMPLING_TEMPERATURE, JobConfig, Reporter
from distillation.losses.functions import CompositeLoss, JSDLoss
from distillation.methods.base import Method, TrainingHooks
from distillation.tasks import Task, TaskData
from distillation.tasks.causal_lm import answered
from distillation.tasks.token_data import IGNORE_INDEX, PROMPT_LENGTH, pad_token_id
from distillation.training.generation import Decoding, generate_answers
from distillation.training.loop import Collator, to_device
from distillation.training.schedules import Schedule


@dataclass
class SamplingStats:
    """The student's samples so far (this attempt)."""

    batches: int = 0  # batches prepared
    on_policy_batches: int = 0  # ... whose answers the student sampled
    answers: int = 0
    tokens: int = 0
    seconds: float = 0.0
    unfinished: int = 0  # samples cut by the token limit before their end-of-sequence token

    @property
    def tokens_per_s(self) -> float:
        return round(self.tokens / self.seconds, 1) if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {"batches": self.batches, "on_policy_batches": self.on_policy_batches,
                "answers": self.answers, "tokens": self.tokens,
                "seconds": round(self.seconds, 2), "tokens_per_s": self.tokens_per_s,
                "unfinished": self.unfinished}


def sampling_decoding(config: JobConfig) -> Decoding:
    """How the student samples its answers (see the module notes)."""
    spec = config.generation
    temperature = spec.temperature if spec.temperature > 0 else ON_POLICY_SAMPLING_TEMPERATURE
    return Decoding(spec.max_new_tokens, temperature, spec.top_p)


def answer_tokens(batch: dict[str, Tensor]) -> int:
    """The positions a causal LM's loss covers in a batch: labels after the one-token shift."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


class StudentSampler:
    """The loop's batch hook (`fit(prepare_batch=...)`): with probability λ, replaces a
    batch's answers with the student's samples to its prompts."""

    def __init__(self, student: nn.Module, collator: Collator, *, lambda_: float,
                 decoding: Decoding, eos_id: int | None, pad_id: int, max_length: int,
                 device: torch.device) -> None:
        self.student = student
        self.collator = collator
        self.lambda_ = lambda_
        self.decoding = decoding
        self.eos_id, self.pad_id = eos_id, pad_id
        self.max_length = max_length
        self.device = device
        self.stats = SamplingStats()

    def _on_policy(self) -> bool:
        if self.lambda_ >= 1:
            return True
        if self.lambda_ <= 0:
            return False
        return float(torch.rand(())) < self.lambda_

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self.stats.batches += 1
        if not self._on_policy():
            return batch
        lengths = batch[PROMPT_LENGTH].tolist()
        prompts = [batch["input_ids"][row, :n].tolist() for row, n in enumerate(lengths)]
        out = generate_answers(self.student, prompts, self.decoding, eos_id=self.eos_id,
                               pad_id=self.pad_id, device=self.device,
                               budgets=[self.max_length - n for n in lengths])
        self.stats.on_policy_batches += 1
        self.stats.answers += len(prompts)
        self.stats.tokens += out.tokens
        self.stats.seconds += out.seconds
        self.stats.unfinished += sum(1 for answer in out.answers
                                     if answer and answer[-1] != self.eos_id)
        rows = [answered(prompt, answer) for prompt, answer in zip(prompts, out.answers,
                                                                   strict=True)]
        return to_device(self.collator(rows), self.device)


class OnPolicyMethod(Method):
    name: ClassVar[str] = "on-policy"

    def __init__(self) -> None:
        super().__init__()
        self.sampler: StudentSampler | None = None

    def losses(self, config: JobConfig, task: Task, student: PreTrainedModel,
               teacher: PreTrainedModel) -> CompositeLoss:
        """JSD(β) alone: the file's loss terms do not apply (`ce` on the student's own samples
        would teach it what it already says)."""
        term = JSDLoss(config.temperature, config.on_policy.beta)
        return CompositeLoss([("gjsd", 1.0, term)],
                             Schedule(config.temperature, config.temperature_end))

    def training(self, config: JobConfig, data: TaskData, student: nn.Module,
                 device: torch.device) -> TrainingHooks:
        if data.separate_tokenizers:
            raise ValueError("on-policy distillation needs a student that reads the teacher's "
                             "token ids: the teacher scores the student's samples as they are")
        tokenizer = data.student.tokenizer
        self.sampler = StudentSampler(
            student, data.student.collator, lambda_=config.on_policy.lambda_,
            decoding=sampling_decoding(config), eos_id=tokenizer.eos_token_id,
            pad_id=pad_token_id(tokenizer), max_length=data.max_length, device=device)
        return TrainingHooks(
            prepare_batch=self.sampler, loss_rows=answer_tokens,
            no_cache="on-policy distillation scores the student's samples, which do not exist "
                     "before training, and the generalized JSD compares the teacher's whole "
                     "distribution, which the top-k cache does not keep; the teacher runs every "
                     "step instead")

    def description(self, config: JobConfig) -> str:
        spec = config.on_policy
        return (f"on-policy distillation, the student sampling a batch's answers with "
                f"probability {spec.lambda_:g} (at temperature "
                f"{sampling_decoding(config).temperature:g}), the teacher scoring every answer "
                f"token; the loss is the generalized JSD with beta {spec.beta:g} at temperature "
                f"{config.temperature:g} (distillation.losses does not apply)")

    def metrics(self) -> dict[str, float]:
        if self.sampler is None:
            return {}
        stats = self.sampler.stats
        return {"student_answers": stats.answers, "student_answer_tokens": stats.tokens,
                "student_tokens_per_s": stats.tokens_per_s,
                "on_policy_batches": stats.on_policy_batches, "batches": stats.batches}

    def finished(self, reporter: Reporter) -> None:
        if self.sampler is None:
            return
        stats = self.sampler.stats
        speed = f" in {stats.seconds:.1f} s ({stats.tokens_per_s:,} tokens/s)" if stats.answers else ""
        reporter.message(
            f"On-policy: the student sampled the answers of {stats.on_policy_batches:,} of "
            f"{stats.batches:,} batches, {stats.answers:,} answers ({stats.tokens:,} tokens)"
            f"{speed}, each scored by the teacher.",
            data={"stage": "distill", "method": self.name, "student_samples": stats.summary()})

    def summary(self, config: JobConfig) -> dict[str, Any]:
        return {**super().summary(config), "lambda": config.on_policy.lambda_,
                "beta": config.on_policy.beta, "temperature": config.temperature,
                "sampling_temperature": sampling_decoding(config).temperature,
                "student_samples": (self.sampler.stats.summary()
                                    if self.sampler is not None else None)}
