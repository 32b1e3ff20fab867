"""Soak run of the production mode: Postgres + Redis, `distill migrate`, `distill api` and two
`distill worker`s, small jobs submitted at intervals for a fixed time, one worker SIGKILLed
mid-run and started again. Prints jobs submitted, succeeded, failed, lost and run twice.

    .venv/bin/python benchmarks/soak.py                 # 10 minutes of submissions, then drain
    .venv/bin/python benchmarks/soak.py --minutes 2     # a quick look

Bounded: it talks only to 127.0.0.1, submits at most `minutes * 60 / interval` jobs, drains for
at most `--drain-minutes`, and stops every process it started. It makes its own Postgres
database and data directory and drops them at the end. Lost, run twice and resumed are defined
in `stack.py`, which `cluster.py` shares.
Results: `benchmarks/results/soak.json` (use `--no-save` for a look without writing).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from stack import (  # benchmarks/, the script's folder, is on the path
    REDIS,
    ROOT,
    Services,
    drain,
    free_port,
    fresh_database,
    machine,
    open_api,
    outcome,
    running_owners,
    small_job,
)

RESULTS = ROOT / "benchmarks" / "results" / "soak.json"


def submit(args: argparse.Namespace, services: Services, api: httpx.Client,
           body: dict[str, Any]) -> list[str]:
    """Submit a job every `interval` s for `minutes`; half-way through, SIGKILL the worker that
    trains the job just submitted, and start it again a submission later. The job ids."""
    jobs: list[str] = []
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
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long jobs are submitted")
    parser.add_argument("--interval", type=float, default=20.0, help="seconds between jobs")
    parser.add_argument("--drain-minutes", type=float, default=20.0,
                        help="max wait at the end for the queue to drain")
    parser.add_argument("--no-save", action="store_true", help="do not write the results file")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="distill-soak-"))
    with fresh_database("distill_soak") as database_url:
        env = {**os.environ, "DISTILL_DATABASE_URL": database_url,
               "DISTILL_BROKER_URL": REDIS, "DISTILL_DATA_DIR": str(work / "data"),
               # A reconciler every 5 s: the main processes talk to Postgres often between forks.
               "DISTILL_RECONCILE_INTERVAL_S": "5", "DISTILL_STALE_HEARTBEAT_AFTER_S": "30",
               "DISTILL_QUEUED_RESEND_AFTER_S": "60"}
        services = Services(env, work, free_port())
        try:
            api = open_api(services, "soak")
            services.start_worker("worker-1")
            services.start_worker("worker-2")
            body = small_job(api, work)
            started = time.monotonic()
            jobs = submit(args, services, api, body)
            drain_started = time.monotonic()
            row = outcome(api, drain(api, jobs, args.drain_minutes))
            row["minutes"] = round((time.monotonic() - started) / 60, 1)
            row["drain_minutes"] = round((time.monotonic() - drain_started) / 60, 1)
        finally:
            services.stop()
    print()
    for name in ("submitted", "succeeded", "failed", "lost", "run_twice", "resumed", "minutes",
                 "drain_minutes"):
        print(f"{name:>10}: {row[name]}")
    for job_id, error in row["failures"].items():
        print(f"failed {job_id}: {error}")
    for job_id, status in row["unfinished"].items():
        print(f"not finished {job_id}: {status}")
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({
            "command": "python benchmarks/soak.py " + shlex.join(sys.argv[1:]),
            "machine": machine(), "workers": 2, "interval_s": args.interval, **row,
        }, indent=2) + "\n")
        print(f"\nrows written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
