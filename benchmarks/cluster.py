"""Several workers, no shared folder: Postgres + Redis, an S3 store (moto's server on
127.0.0.1), `distill api` and three `distill worker`s, each process with a data and scratch
directory of its own. A batch of small jobs is submitted at once; one worker is SIGKILLed (with
its job process) once the job it trains has a checkpoint half-way through in the store, and is
not started again. Then the same batch against one worker alone, on a fresh database and bucket.
Prints jobs finished, lost, run twice and resumed, and the time each deployment took to drain
the batch.

    .venv/bin/python benchmarks/cluster.py               # 6 jobs; ~4.5 min on 2 loaded cores
    .venv/bin/python benchmarks/cluster.py --jobs 3 --no-save   # a quick look

Bounded: it talks only to 127.0.0.1, waits at most `--drain-minutes` per deployment, stops
every process it started and drops its databases. Each worker trains on `--threads` threads
(one, as one GPU per worker): on a 2-core machine three workers cannot be three times as fast
as one. Lost, run twice and resumed are defined in `stack.py`. Results:
`benchmarks/results/cluster.json` (`--no-save` for a look without writing).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from stack import (  # benchmarks/, the script's folder, is on the path
    REDIS,
    ROOT,
    Services,
    free_port,
    fresh_database,
    machine,
    open_api,
    outcome,
    small_job,
)

if TYPE_CHECKING:
    from tests.factories.s3 import S3Server

RESULTS = ROOT / "benchmarks" / "results" / "cluster.json"


def wait_ready(services: Services, timeout: float = 180) -> None:
    """Until every worker's Celery log says it is ready, so the timing starts with the batch."""
    deadline = time.monotonic() + timeout
    for name in services.workers:
        log = services.log_dir / f"{name}.log"
        while b" ready." not in (log.read_bytes() if log.exists() else b""):
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} not ready after {timeout:.0f} s; see {log}")
            time.sleep(0.5)


def job_rows(database_url: str) -> list[dict[str, Any]]:
    """Every job's id, status, attempt and owner, from the database of record (one query)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(
                "SELECT id, status, attempts, worker_id, created_at, finished_at FROM jobs"))]
    finally:
        engine.dispose()


def watch(services: Services, api: httpx.Client, database_url: str, *, kill_at_step: int | None,
          minutes: float) -> tuple[dict[str, dict[int, str]], dict[str, Any]]:
    """Poll until every job is final (or `minutes` pass): which worker ran each attempt, and,
    with `kill_at_step`, SIGKILL the worker of the first running job whose newest checkpoint in
    the store is at least that step."""
    ran_on: dict[str, dict[int, str]] = {}
    killed: dict[str, Any] = {}
    started = time.monotonic()
    while time.monotonic() < started + minutes * 60:
        rows = job_rows(database_url)
        for row in rows:
            worker = services.worker_of(row["worker_id"] or "")
            if row["status"] == "running" and worker:
                ran_on.setdefault(row["id"], {})[row["attempts"]] = worker
        if all(r["status"] in ("succeeded", "failed", "cancelled") for r in rows):
            break
        if kill_at_step is not None and not killed:
            for job_id in (r["id"] for r in rows if r["status"] == "running" and r["id"] in ran_on):
                worker = ran_on[job_id][max(ran_on[job_id])]
                listed = api.get(f"/v1/distillation/jobs/{job_id}/checkpoints").json()["data"]
                if (listed and listed[0]["step"] >= kill_at_step
                        and services.workers[worker].poll() is None):
                    services.kill_worker(worker)
                    killed = {"worker": worker, "job": job_id, "checkpoint_step": listed[0]["step"],
                              "at_s": round(time.monotonic() - started, 1)}
                    print(f"[{killed['at_s']:6.0f}s] SIGKILL {worker}, training {job_id} "
                          f"(checkpoint at step {listed[0]['step']} in the store)", flush=True)
                    break
        time.sleep(1)
    return ran_on, killed


def deployment(label: str, *, workers: int, kill: bool, s3: S3Server, work: Path,
               args: argparse.Namespace) -> dict[str, Any]:
    """One deployment on a fresh database and bucket: the batch submitted, watched, counted."""
    base = work / f"{workers}-workers-{'kill' if kill else 'all'}"
    base.mkdir(parents=True)
    with fresh_database("distill_cluster") as database_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTILL_")}
        env.update({
            **s3.env(),  # a bucket of its own
            "DISTILL_DATABASE_URL": database_url, "DISTILL_BROKER_URL": REDIS,
            "DISTILL_DATA_DIR": str(base / "api"),
            "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
            # A dead worker's job is re-queued 30 s after its last heartbeat (5 s reconciler).
            "DISTILL_RECONCILE_INTERVAL_S": "5", "DISTILL_STALE_HEARTBEAT_AFTER_S": "30",
            "DISTILL_QUEUED_RESEND_AFTER_S": "60"})
        services = Services(env, base, free_port())
        try:
            api = open_api(services, "cluster")
            body = small_job(api, base, train_rows=args.train_rows, epochs=args.epochs,
                             checkpoint_every_steps=args.checkpoint_every)
            for i in range(1, workers + 1):  # a data directory (and scratch cache) each
                services.start_worker(f"worker-{i}", {"DISTILL_DATA_DIR": str(base / f"worker-{i}")})
            wait_ready(services)
            print(f"{label}: {workers} worker(s) ready, submitting {args.jobs} jobs", flush=True)
            jobs = [api.post("/v1/distillation/jobs", json={**body, "metadata": {"n": str(i)}})
                    .raise_for_status().json()["id"] for i in range(args.jobs)]
            steps = args.train_rows // 4 * args.epochs
            ran_on, killed = watch(services, api, database_url, minutes=args.drain_minutes,
                                   kill_at_step=steps // 2 if kill else None)
            final = {j: api.get(f"/v1/distillation/jobs/{j}").json() for j in jobs}
            row = outcome(api, final)
            rows = job_rows(database_url)
            resumed_at = {j: [e["data"]["resumed_from_step"] for e in api.get(
                f"/v1/distillation/jobs/{j}/events?limit=1000").json()["data"]
                if e["data"] and "resumed_from_step" in e["data"]] for j in jobs}
        finally:
            services.stop()
    finished = [r["finished_at"] for r in rows if r["finished_at"] is not None]
    return {
        "deployment": label, "workers": workers, **row,
        "resumed_from_checkpoint": sum(bool(steps) for steps in resumed_at.values()),
        "resumed_on_another_worker": sum(len(set(a.values())) > 1 for a in ran_on.values()),
        "drain_s": (round(max(finished) - min(r["created_at"] for r in rows), 1)
                    if len(finished) == len(rows) else None),
        "killed": killed or None, "attempts_ran_on": ran_on,
        "resumed_from_steps": {j: steps for j, steps in resumed_at.items() if steps},
    }


COLUMNS = [("deployment", "deployment"), ("workers", "workers"), ("submitted", "jobs"),
           ("succeeded", "finished"), ("lost", "lost"), ("run_twice", "run twice"),
           ("resumed", "resumed"), ("resumed_from_checkpoint", "from a checkpoint"),
           ("resumed_on_another_worker", "on another worker"), ("drain_s", "drain s")]


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |",
             "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(r[key]) for key, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=6, help="jobs in the batch")
    parser.add_argument("--train-rows", type=int, default=4800,
                        help="training rows per job (batch 4: a step each 4 rows)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per job")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps per checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--drain-minutes", type=float, default=15.0,
                        help="max wait for each deployment to drain the batch")
    parser.add_argument("--also-unharmed", action="store_true",
                        help="also run the batch on three workers with none killed")
    parser.add_argument("--no-save", action="store_true", help="do not write the results file")
    args = parser.parse_args()

    from tests.factories.s3 import moto_server  # the project root is on the path (stack.py)

    work = Path(tempfile.mkdtemp(prefix="distill-cluster-"))
    with moto_server() as s3:
        rows = [deployment("three workers, one SIGKILLed", workers=3, kill=True, s3=s3,
                           work=work, args=args),
                deployment("one worker", workers=1, kill=False, s3=s3, work=work, args=args)]
        if args.also_unharmed:
            rows.append(deployment("three workers, none killed", workers=3, kill=False, s3=s3,
                                   work=work, args=args))
    print()
    print(table(rows))
    one = rows[1]["drain_s"]
    for row in (rows[0], *rows[2:]):
        if one and row["drain_s"]:
            print(f"\ndrain time, one worker / {row['deployment']}: {one / row['drain_s']:.2f}x "
                  f"({os.cpu_count()} cpus, {args.threads} thread(s) per worker)")
    for row in rows:
        if row["killed"]:
            kill = row["killed"]
            print(f"\n{row['deployment']}: {kill['worker']} SIGKILLed {kill['at_s']} s in, "
                  f"training {kill['job']} (checkpoint at step {kill['checkpoint_step']} in the "
                  f"store); attempts ran on {row['attempts_ran_on'].get(kill['job'])}, resumed "
                  f"from step(s) {row['resumed_from_steps'].get(kill['job'])}")
        for job_id, error in row["failures"].items():
            print(f"failed {job_id}: {error}")
        for job_id, status in row["unfinished"].items():
            print(f"not finished {job_id}: {status}")
    if all(not r["failures"] and not r["unfinished"] for r in rows):
        shutil.rmtree(work)
    else:
        print(f"\nlogs and folders kept in {work}")
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({
            "command": "python benchmarks/cluster.py " + shlex.join(sys.argv[1:]),
            "machine": machine(), "setup": {k: v for k, v in vars(args).items() if k != "no_save"},
            "rows": rows}, indent=2) + "\n")
        print(f"\nrows written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
