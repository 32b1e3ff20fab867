"""Checkpoints of the distillation loop, and resuming from them.

A job whose worker died is queued again and run from the start by another worker; `Checkpointer`
makes that run continue where the last checkpoint left off, so the student ends up with the same
number of optimizer steps as an uninterrupted run. `fit` calls `restore` once before its first
batch and `after_step` after every optimizer step. A checkpoint (see `checkpoint_index` for the
layout) holds:

- `<name>.safetensors`: the weights of each trained module (the student, the loss module's
  learned projections);
- `trainer.pt`: optimizer and scheduler state, and the RNG states (python, numpy, torch, CUDA);
- `state.json`: where the loop is (epoch, batches done in it, the seed that rebuilds its batch
  order), the loss history behind the training curve, per-epoch evaluations, and the fingerprint
  of the settings that must not change for a resume to be exact;
- `checkpoint.json`: the small metadata the API lists (written last).

Each one is written into a temporary directory and renamed into place; the newest `keep` stay.
A reporter that asks to pause (`should_pause`: the worker is shutting down) gets a checkpoint of
the step just taken, then `Cancelled`; one that asks to stop gets no checkpoint written at all.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_model
from torch import nn

from distillation.config import Cancelled, Hyperparameters, Reporter
from distillation.layout import (
    FINETUNED_MARKER,
    METADATA,
    checkpoint_id,
    checkpoints_dir,
    list_checkpoints,
    step_dir,
    teacher_cache_path,
)
from distillation.training.loop import LoopState, check_stop

FORMAT = 1
TRAINER = "trainer.pt"
STATE = "state.json"
# Settings that decide the batches and the schedule: a checkpoint taken under others is not resumed.
FINGERPRINT_KEYS = ("epochs", "batch_size", "seed", "gradient_accumulation_steps", "max_steps",
                    "learning_rate", "lr_scheduler", "warmup_ratio")


def rng_state() -> dict[str, Any]:
    """Every random generator the loop may draw from (dropout, shuffles), in a torch-loadable form."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": [name, np.asarray(keys).tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _misfit(module: nn.Module, tensors: dict[str, torch.Tensor]) -> str | None:
    """Why saved weights do not fit `module` (None: they do). `save_model` keeps one name of each
    set of tied tensors, so a missing name is fine when its tensor is one saved under another."""
    own = module.state_dict()
    unexpected = [name for name in tensors if name not in own]
    if unexpected:
        return f"it has weights the model lacks ({', '.join(unexpected[:3])})"
    reshaped = [f"{name} {tuple(tensors[name].shape)} vs {tuple(own[name].shape)}"
                for name in tensors if tensors[name].shape != own[name].shape]
    if reshaped:
        return f"its weights have other shapes ({'; '.join(reshaped[:2])})"
    saved = {own[name].data_ptr() for name in tensors}
    lost = [name for name in own if name not in tensors and own[name].data_ptr() not in saved]
    if lost:
        return f"it lacks weights the model has ({', '.join(lost[:3])})"
    return None


def _recent_loss(state: LoopState) -> float | None:
    """The mean train loss of the steps since the last metrics log, else the last logged one."""
    recent = [w["train_loss"] for w in state.window if "train_loss" in w]
    return sum(recent) / len(recent) if recent else state.result.final_loss


def _size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.is_file())


class Checkpointer:
    """Saves the loop every `hp.checkpoint_every_steps` optimizer steps (and at its last step, so
    a worker lost while evaluating or exporting does not train again) into
    `work_dir/checkpoints/step-<n>`, and restores the newest usable one when the loop starts."""

    def __init__(self, work_dir: Path, *, hp: Hyperparameters, modules: dict[str, nn.Module],
                 reporter: Reporter, keep: int = 2) -> None:
        self.work_dir = work_dir
        self.every = max(1, hp.checkpoint_every_steps)
        self.fingerprint = {key: getattr(hp, key) for key in FINGERPRINT_KEYS}
        self.modules = modules
        self.reporter = reporter
        self.keep = max(1, keep)

    # -- fit's hooks ---------------------------------------------------------------------------
    def after_step(self, state: LoopState) -> None:
        step = state.result.steps
        pause = self.reporter.should_pause()
        if step % self.every == 0 or step >= state.total_steps or pause:
            self.save(state)
        if pause:  # the worker is shutting down: the next attempt goes on from this step
            self.reporter.message(f"Saved a checkpoint at step {step} to stop on.",
                                  data={"paused_at_step": step, "checkpoint": checkpoint_id(step)})
            raise Cancelled(f"paused at step {step}")

    def restore(self, state: LoopState) -> None:
        """Load the newest checkpoint that reads back whole and fits this run, if there is one."""
        root = checkpoints_dir(self.work_dir)
        for leftover in root.glob(".tmp-*") if root.is_dir() else []:
            shutil.rmtree(leftover, ignore_errors=True)  # a save cut short by the worker's death
        for directory, meta in list_checkpoints(self.work_dir):
            try:
                loaded = self._read(directory, state)
            except Exception as exc:  # unreadable: try the one before it
                self.reporter.message(f"Checkpoint {directory.name} cannot be read ({exc}); "
                                      "trying an older one.", level="warning")
                continue
            if loaded is None:
                continue
            self._apply(state, *loaded)
            step, epoch = state.result.steps, state.epoch
            self.reporter.message(f"Resumed from checkpoint at step {step} (epoch {epoch}).",
                                  data={"resumed_from_step": step, "epoch": epoch,
                                        "checkpoint": meta["id"]})
            return

    # -- saving --------------------------------------------------------------------------------
    def save(self, state: LoopState) -> Path:
        # What was reported up to here is written first (a refused write means the worker no
        # longer owns the job); a run told to stop (cancelled, or its job taken) writes no more.
        self.reporter.flush()
        check_stop(self.reporter)
        step = state.result.steps
        final = step_dir(self.work_dir, step)
        tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            for name, module in self.modules.items():
                save_model(module, str(tmp / f"{name}.safetensors"))
            torch.save({"optimizer": state.optimizer.state_dict(),
                        "scheduler": state.scheduler.state_dict(), "rng": rng_state()},
                       tmp / TRAINER)
            (tmp / STATE).write_text(json.dumps({
                "format": FORMAT, "fingerprint": self.fingerprint, "total_steps": state.total_steps,
                "step": step, "epoch": state.epoch, "batches_done": state.batches_done,
                "batch_seed": state.batch_seed, "history": state.result.history,
                "evals": state.result.evals, "window": state.window,
            }))
            cache = teacher_cache_path(self.work_dir)
            meta = {
                "id": checkpoint_id(step), "step": step,
                "epoch": state.epoch, "created_at": int(time.time()),
                "train_loss": _recent_loss(state),
                "teacher_cache": str(cache) if cache.exists() else None,
            }
            meta["size_bytes"] = _size(tmp)
            (tmp / METADATA).write_text(json.dumps(meta))
            if final.exists():  # a worker that lost its lease wrote this step too: ours is as good
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for directory, _ in list_checkpoints(self.work_dir)[self.keep:]:
            shutil.rmtree(directory, ignore_errors=True)
        return final

    # -- loading -------------------------------------------------------------------------------
    def _read(self, directory: Path, state: LoopState
              ) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]], dict[str, Any]] | None:
        """Everything a checkpoint holds, read before anything is changed; None if it was taken
        under other settings."""
        saved = json.loads((directory / STATE).read_text())
        if saved.get("format") != FORMAT or saved.get("fingerprint") != self.fingerprint \
                or saved.get("total_steps") != state.total_steps:
            self.reporter.message(f"Checkpoint {directory.name} was taken with other training "
                                  "settings; not resuming from it.", level="warning")
            return None
        weights = {name: load_file(str(directory / f"{name}.safetensors"))
                   for name in self.modules}
        for name, module in self.modules.items():
            # A student sized again on resume can come out another shape (candidates whose
            # scores tie within rounding, another CPU): train it afresh rather than fail.
            why = _misfit(module, weights[name])
            if why is not None:
                self.reporter.message(f"Checkpoint {directory.name} does not fit this run's "
                                      f"{name}: {why}; not resuming from it.", level="warning")
                return None
        trainer = torch.load(directory / TRAINER, map_location="cpu", weights_only=True)
        return saved, weights, trainer

    def _apply(self, state: LoopState, saved: dict[str, Any],
               weights: dict[str, dict[str, torch.Tensor]], trainer: dict[str, Any]) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(weights[name], strict=False)  # `_misfit` checked them
        state.optimizer.load_state_dict(trainer["optimizer"])
        state.scheduler.load_state_dict(trainer["scheduler"])
        set_rng_state(trainer["rng"])
        result = state.result
        result.steps = saved["step"]
        result.epochs = saved["epoch"] - 1
        result.history = [(int(step), float(loss)) for step, loss in saved["history"]]
        result.evals = list(saved["evals"])
        state.epoch, state.batches_done = saved["epoch"], saved["batches_done"]
        state.window[:] = saved["window"]


def teacher_finetuned(save_dir: Path) -> bool:
    """Whether `save_dir` holds a teacher whose fine-tuning finished (an earlier attempt's)."""
    return (save_dir / FINETUNED_MARKER).is_file()


def mark_teacher_finetuned(save_dir: Path, *, epochs: int, steps: int) -> None:
    """Written after the fine-tuned teacher is saved, so a resumed job skips fine-tuning."""
    (save_dir / FINETUNED_MARKER).write_text(json.dumps(
        {"epochs": epochs, "steps": steps, "created_at": int(time.time())}))
