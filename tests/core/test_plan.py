"""A job's plan (its config less the paths) and the checks on it: the plan keeps every field of
the config in step, a config splits into plan and paths and back unchanged, and the rules of
`job_checks` name the field they refuse."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from distillation.config import (
    AugmentSpec,
    DataGenerationSpec,
    DataSpec,
    FinetuneSpec,
    GenerationSpec,
    Hyperparameters,
    JobConfig,
    LossSpec,
    OnPolicySpec,
    StudentSpec,
)
from distillation.data.vocab import Vocabulary
from distillation.job_checks import Model, check_config, job_problems
from distillation.models.info import BASE_TASK, CAUSAL_LM, CLASSIFICATION, SEQ2SEQ, ModelInfo
from distillation.plan import RUN_SETTINGS, DataGenerationPlan, JobPaths, JobPlan, plan_of

PATHS = {"teacher_path", "train_file", "validation_file", "transfer_file", "output_dir",
         "work_dir", "generated_file"}


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def test_the_plan_has_every_field_of_the_config_but_paths_with_its_defaults() -> None:
    config = {f.name for f in dataclasses.fields(JobConfig)}
    plan = {f.name for f in dataclasses.fields(JobPlan)}

    assert plan == config - PATHS - set(RUN_SETTINGS)
    # the paths are every field typed Path, here or in a spec the plan holds
    assert {f.name for f in dataclasses.fields(JobConfig) if "Path" in str(f.type)} == PATHS
    assert [f.name for f in dataclasses.fields(StudentSpec) if "Path" in str(f.type)] == [
        "model_path"]
    config_defaults = _defaults(JobConfig)
    for name, value in _defaults(JobPlan).items():
        assert config_defaults[name] == value, name
    generation = {f.name for f in dataclasses.fields(DataGenerationSpec)}
    assert {f.name for f in dataclasses.fields(DataGenerationPlan)} == generation - {"examples_file"}


def _full_config(tmp: Path) -> JobConfig:
    """A config with every field away from its default."""
    return JobConfig(
        task=CAUSAL_LM, teacher_path=tmp / "teacher", train_file=tmp / "train.jsonl",
        output_dir=tmp / "out", work_dir=tmp / "work", validation_file=tmp / "dev.jsonl",
        transfer_file=tmp / "texts.jsonl", generated_file=tmp / "generated.jsonl",
        student=StudentSpec(model_path=tmp / "student", init="random", prune_vocabulary=False),
        augmentation=AugmentSpec(methods=("mask",), multiplier=2),
        teacher_finetune=FinetuneSpec(epochs=2), data=DataSpec(text_column="t"),
        temperature=3.0, temperature_end=1.0,
        losses=[LossSpec("hidden_mse", 0.2, layer_map={0: 1}), LossSpec("jsd", beta=0.3)],
        hyperparameters=Hyperparameters(epochs=1, time_budget_minutes=2.5),
        device="cpu", teacher_name="mine", benchmark_runs=2, export_runtimes=False,
        method="on-policy", on_policy=OnPolicySpec(lambda_=0.7, beta=1.0),
        generation=GenerationSpec(max_new_tokens=8, temperature=0.5, top_p=0.9, num_samples=2),
        data_generation=DataGenerationSpec("write prompts", tmp / "examples.jsonl", 20, 0.8),
    )


def test_a_config_is_its_plan_at_its_paths(tmp_path: Path) -> None:
    config = _full_config(tmp_path)

    plan = plan_of(config)
    paths = JobPaths(teacher=config.teacher_path, train_file=config.train_file,
                     output_dir=config.output_dir, work_dir=config.work_dir,
                     student_model=tmp_path / "student", validation_file=config.validation_file,
                     transfer_file=config.transfer_file,
                     examples_file=tmp_path / "examples.jsonl",
                     generated_file=config.generated_file)

    assert plan.student.model_path is None and plan.data_generation == DataGenerationPlan(
        "write prompts", 20, 0.8)
    assert plan.config(paths, device="cpu", benchmark_runs=2, export_runtimes=False) == config
    with pytest.raises(ValueError, match="examples file"):
        plan.config(dataclasses.replace(paths, examples_file=None))


def _info(task: str, *, layers: int = 2, model_type: str = "bert") -> ModelInfo:
    return ModelInfo(model_type=model_type, task=task, num_layers=layers, hidden_size=32,
                     num_heads=2, intermediate_size=64, vocab_size=100,
                     is_encoder_decoder=task == SEQ2SEQ, labels=None)


def _model(task: str, **kwargs: Any) -> Model:
    return Model(_info(task, **kwargs), lambda: Vocabulary(kind="WordPiece", fingerprint="v"))


@pytest.mark.parametrize(("task", "teacher", "change", "param", "code"), [
    ("no-such-task", CLASSIFICATION, {}, "task", "unsupported_task"),
    (CLASSIFICATION, BASE_TASK, {}, "teacher.finetune", "teacher_needs_finetune"),
    (CLASSIFICATION, CAUSAL_LM, {}, "teacher.model", "wrong_model_task"),
    (CAUSAL_LM, CAUSAL_LM, {"augmentation": AugmentSpec()}, "augmentation",
     "unsupported_option"),
    (CLASSIFICATION, CLASSIFICATION, {"augmentation": AugmentSpec(methods=("shuffle",))},
     "augmentation.methods", "invalid_augmentation"),
    (CLASSIFICATION, CLASSIFICATION, {"method": "sequence"}, "distillation.method",
     "unsupported_option"),
    (CAUSAL_LM, CAUSAL_LM, {"method": "beam"}, "distillation.method", "unsupported_option"),
    (SEQ2SEQ, SEQ2SEQ, {"data_generation": DataGenerationPlan("d", 10, 1.0)},
     "data_generation", "unsupported_option"),
    (CAUSAL_LM, CAUSAL_LM, {"student": StudentSpec(target={"compression": 2}),
                            "losses": [LossSpec("hidden_mse", layer_map={0: 1})]},
     "student.target", "invalid_loss"),
    (CLASSIFICATION, CLASSIFICATION,
     {"student": StudentSpec(architecture={"hidden_size": 30, "num_heads": 4})},
     "student.architecture.hidden_size", "invalid_architecture"),
    (CLASSIFICATION, CLASSIFICATION, {"losses": [LossSpec("hidden_mse", layer_map={0: 5})]},
     "distillation.losses[0].layer_map", "invalid_loss"),
    (CAUSAL_LM, CAUSAL_LM, {"losses": [LossSpec("logit")]}, "distillation.losses[0].type",
     "invalid_loss"),
    (CAUSAL_LM, CAUSAL_LM, {"student": StudentSpec(architecture={}, prune_vocabulary=True)},
     "student.prune_vocabulary", "vocabulary_not_prunable"),
    (SEQ2SEQ, SEQ2SEQ, {"hyperparameters": Hyperparameters(quantization_aware=0.2)},
     "hyperparameters.quantization_aware", "unsupported_option"),
])
def test_each_rule_names_its_field(task: str, teacher: str, change: dict[str, Any], param: str,
                                   code: str) -> None:
    plan = dataclasses.replace(JobPlan(task=task, student=StudentSpec(architecture={})),
                               **change)
    model_type = "gpt2" if teacher == CAUSAL_LM else "t5" if teacher == SEQ2SEQ else "bert"

    problems = job_problems(plan, _model(teacher, model_type=model_type), None,
                            transfer_file=False)

    assert [(p.param, p.code) for p in problems][:1] == [(param, code)]


def test_generative_methods_pass_for_causal_lms_and_data_generation_too() -> None:
    for method in ("token", "sequence", "on-policy"):
        plan = JobPlan(task=CAUSAL_LM, student=StudentSpec(architecture={}), method=method)
        assert job_problems(plan, _model(CAUSAL_LM, model_type="gpt2"), None,
                            transfer_file=False) == []
    seq2seq = JobPlan(task=SEQ2SEQ, student=StudentSpec(architecture={}), method="sequence")
    assert [p.param for p in job_problems(seq2seq, _model(SEQ2SEQ, model_type="t5"), None,
                                          transfer_file=False)] == ["distillation.method"]
    plan = JobPlan(task=CAUSAL_LM, student=StudentSpec(architecture={}),
                   data_generation=DataGenerationPlan("d", 10, 1.0))
    assert job_problems(plan, _model(CAUSAL_LM, model_type="gpt2"), None,
                        transfer_file=False) == []


def test_a_transfer_file_is_refused_for_language_models_at_run_time(tmp_path: Path) -> None:
    from tests.factories.lm import save_gpt2

    teacher = save_gpt2(tmp_path / "teacher")
    config = JobConfig(task=CAUSAL_LM, teacher_path=teacher, student=StudentSpec(architecture={}),
                       train_file=tmp_path / "t.jsonl", output_dir=tmp_path / "o",
                       work_dir=tmp_path / "w", transfer_file=tmp_path / "texts.jsonl")

    with pytest.raises(ValueError, match="transfer_file is for sequence-classification"):
        check_config(config)
