"""Students for language models: resized Llama configs keep grouped-query attention consistent,
teacher-initialised students keep whole heads and tied embeddings, candidates are counted with
the language model's head, and a `student.target` job sizes a causal-LM (and a seq2seq) student
that is at least that many times smaller, built from the teacher, and generates once exported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from distillation.config import DataSpec, Hyperparameters, StudentSpec
from distillation.engine import run_job
from distillation.export.predict import Predictor
from distillation.losses.layer_map import even_spread
from distillation.students.build import build_student, sized_config
from distillation.students.heads import head_map, kv_heads
from distillation.students.sizing import (
    architectures,
    count,
    count_all,
    pick,
    teacher_parameters,
)
from tests.factories.jobs import toy_job
from tests.factories.lm import chat_records, reverse_records, save_chat_llama, save_gpt2, save_t5
from tests.factories.reporting import RecordingReporter

CAUSAL_LM = "causal-lm"


def smollm2_config() -> LlamaConfig:
    """SmolLM2-135M-Instruct's design (its config, no weights)."""
    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                       num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                       head_dim=64, tie_word_embeddings=True, max_position_embeddings=8192)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_chat_llama(tmp_path_factory.mktemp("chat_llama"))


@pytest.fixture(scope="module")
def llama(llama_dir: Path) -> LlamaForCausalLM:
    return AutoModelForCausalLM.from_pretrained(llama_dir).eval()


def test_key_value_heads_divide_the_heads() -> None:
    assert [kv_heads(h, 3) for h in (9, 7, 6, 4, 3, 2, 1)] == [3, 1, 3, 2, 3, 2, 1]
    assert kv_heads(4, 2) == 2 and kv_heads(3, 2) == 1

    config = sized_config(smollm2_config(), {"hidden_size": 256, "num_heads": 4})

    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 64)
    assert config.hidden_size == 256 and config.tie_word_embeddings


def test_smollm2_candidates_count_the_tied_head_once() -> None:
    teacher = smollm2_config()

    total = teacher_parameters(teacher, task=CAUSAL_LM)
    shapes = count_all(teacher, architectures(teacher), 49152, task=CAUSAL_LM)

    assert total == 134_515_008  # the real model's count: its head is its embeddings
    assert all(c.num_heads * 64 == c.hidden_size for c in shapes)
    # Depths between are extrapolated per width: exact, as building each one says
    for c in [s for s in shapes if s.num_layers in (3, 17, 29)]:
        assert c.parameters == count(teacher, c, 49152, task=CAUSAL_LM).parameters
    # At 4x (33.6M) the full width has room for one layer beside its 28.3M embeddings
    fits = {(c.num_layers, c.hidden_size) for c in shapes if c.parameters <= total / 4}
    assert (1, 576) in fits and (2, 576) not in fits
    assert max(n for n, w in fits if w == 384) == 9 and max(n for n, w in fits if w == 256) == 29


def test_pick_scores_only_the_deepest_of_each_width_when_there_are_many() -> None:
    scored: list[tuple[int, int]] = []

    def by_depth(c: object) -> float:
        scored.append((c.num_layers, c.hidden_size))  # type: ignore[attr-defined]
        return float(c.num_layers)  # type: ignore[attr-defined]

    chosen, report = pick(smollm2_config(), {"compression": 4}, vocab_size=49152,
                          task=CAUSAL_LM, score_fn=by_depth, score_key="log_likelihood_at_init",
                          max_scored=30)

    assert report["feasible"] > 30 and len(scored) == len(report["log_likelihood_at_init"]) == 5
    assert {w for _, w in scored} == {576, 448, 384, 256, 192}
    assert (chosen.num_layers, chosen.hidden_size) == (30, 192)
    assert report["chosen"]["compression"] >= 4 and "deepest of each width" in report["why"]


def test_narrower_llama_keeps_whole_heads_of_its_kv_groups(llama: LlamaForCausalLM) -> None:
    # Given the teacher's 4 heads of 8 in 2 key-value groups ({0, 1} read kv 0, {2, 3} kv 1),
    # and the identity as the residual basis (the projection keeps the first 16 coordinates)
    arch = {"num_layers": 2, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32}
    student = build_student(StudentSpec(architecture=arch), llama, task=CAUSAL_LM,
                            directions=torch.eye(32))
    config = student.config
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (2, 2, 8)
    heads = head_map(config, llama.config)
    assert heads is not None and heads.q == [0, 2] and heads.kv == [0, 1]

    s, t = student.state_dict(), llama.state_dict()
    rows = torch.cat([torch.arange(0, 8), torch.arange(16, 24)])  # query heads 0 and 2
    for layer in range(2):
        prefix = f"model.layers.{layer}.self_attn."
        assert torch.equal(s[prefix + "q_proj.weight"], t[prefix + "q_proj.weight"][rows, :16])
        for name in ("k_proj", "v_proj"):  # both key-value heads, whole
            assert torch.equal(s[prefix + f"{name}.weight"], t[prefix + f"{name}.weight"][:, :16])
        assert torch.equal(s[prefix + "o_proj.weight"], t[prefix + "o_proj.weight"][:16, rows])
    # Tied embeddings stay tied: the head is the (projected) embedding matrix
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()
    assert torch.equal(s["model.embed_tokens.weight"], t["model.embed_tokens.weight"][:, :16])
    ids = torch.randint(0, config.vocab_size, (2, 9))
    assert torch.isfinite(student(input_ids=ids).logits).all()


def test_heads_fewer_than_a_group_take_their_own_groups_first(llama: LlamaForCausalLM) -> None:
    config = sized_config(llama.config, {"hidden_size": 24, "num_heads": 3})

    heads = head_map(config, llama.config)

    assert config.num_key_value_heads == 1  # 3 heads cannot share 2 groups evenly
    assert heads is not None and heads.kv == [1] and heads.q == [2, 3, 0]


def test_fewer_layers_at_full_width_copy_the_teacher(llama_dir: Path, tmp_path: Path) -> None:
    teacher = LlamaForCausalLM.from_pretrained(llama_dir, num_hidden_layers=3).eval()
    ids = torch.randint(0, teacher.config.vocab_size, (2, 11))

    whole = build_student(StudentSpec(architecture={"num_layers": 3}), teacher, task=CAUSAL_LM)
    assert torch.allclose(whole.eval()(input_ids=ids).logits, teacher(input_ids=ids).logits,
                          atol=1e-5)  # the teacher's shape: its logits exactly

    student = build_student(StudentSpec(architecture={"num_layers": 2}), teacher, task=CAUSAL_LM)
    s, t = student.state_dict(), teacher.state_dict()
    for i, j in enumerate(even_spread(2, 3)):
        for name in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.down_proj.weight",
                     "input_layernorm.weight"):
            assert torch.equal(s[f"model.layers.{i}.{name}"], t[f"model.layers.{j}.{name}"])
    assert torch.equal(s["model.norm.weight"], t["model.norm.weight"])
    assert student.config.num_key_value_heads == 2 and student.config.tie_word_embeddings
    student.save_pretrained(tmp_path / "student")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "student").eval()
    assert torch.allclose(reloaded(input_ids=ids).logits, student.eval()(input_ids=ids).logits)


@pytest.mark.parametrize(("save", "task", "records", "compression"), [
    (save_chat_llama, CAUSAL_LM, chat_records(24), 2.0),
    (save_gpt2, CAUSAL_LM, chat_records(24), 2.0),
    (save_t5, "seq2seq", reverse_records(24), 2.0),
], ids=["llama", "gpt2", "t5"])
def test_job_sized_to_a_target_for_a_language_model(
    save: object, task: str, records: list[dict[str, object]], compression: float,
    tmp_path: Path,
) -> None:
    teacher_dir = save(tmp_path / "teacher")  # type: ignore[operator]
    if save is save_gpt2:  # prompt + completion records for a tokenizer with no chat template
        records = [{"prompt": r["messages"][0]["content"],  # type: ignore[index]
                    "completion": r["messages"][1]["content"]} for r in records]  # type: ignore[index]
    config = toy_job(teacher_dir, tmp_path / "job", records, task=task,
                     hyperparameters=Hyperparameters(epochs=1, batch_size=8, max_steps=2),
                     student=StudentSpec(target={"compression": compression}),
                     data=DataSpec(max_seq_length=32))
    recorder = RecordingReporter()

    result = run_job(config, recorder)

    selection = result.report["student_selection"]
    assert result.report["compression"] >= compression  # parameters counted, as exported
    assert selection["chosen"]["compression"] == pytest.approx(result.report["compression"],
                                                                abs=0.01)
    scores = selection["log_likelihood_at_init"]  # every feasible shape built and scored
    chosen = f"{selection['chosen']['num_layers']}x{selection['chosen']['hidden_size']}"
    assert len(scores) == selection["feasible"] and scores[chosen] == max(scores.values())
    assert all(score < 0 for score in scores.values())  # log-probabilities
    predictor = Predictor.load(config.output_dir)
    assert predictor.model.config.hidden_size == selection["chosen"]["hidden_size"]
    heads = predictor.model.config.num_attention_heads
    kv = getattr(predictor.model.config, "num_key_value_heads", heads)
    assert heads == selection["chosen"]["num_heads"] and heads % kv == 0
    assert selection["chosen"].get("num_key_value_heads", heads) == kv
    (generated,) = predictor.generate(["copy red cat"], 3)
    assert isinstance(generated["text"], str)
