"""Serving throughput: the service's predict endpoint against a naive `transformers.pipeline`
server, on the same SST-2 student, driven by `wrk` (a C load generator, far cheaper per request
than either server).

    .venv/bin/python benchmarks/serving.py                       # distils a student first (~8 min)
    .venv/bin/python benchmarks/serving.py --work /tmp/serving   # reuses the student of a run there

Needs `wrk` on the PATH (`apt-get install wrk` on Debian/Ubuntu, `brew install wrk` on macOS).

1. `distill serve` on a data directory of its own (`--work`); when that directory holds no
   distilled SST-2 classifier yet, it distils one as `distill demo` does (8,000 labelled rows,
   8,000 unlabelled texts, a student sized 4x smaller, fine-tuned teacher), which also exports
   its ONNX runtimes. Then only `distill api` runs (no worker), at its default settings (the
   rate limits on), for the measurements.
2. The naive baseline (`benchmarks/naive_server.py`) on the same student directory.
3. `wrk` (one thread, `benchmarks/wrk_predict.lua`) drives each server at each concurrency for
   `--seconds`, one SST-2 dev sentence per request in turn, after a short uncounted warm-up.
4. The ceiling: the student's batched forward (tokenisation included, batch 32) with no HTTP,
   in a process of its own, per runtime.

Prints requests/s, p50 and p99 per server, runtime and concurrency, the service's ratio to the
naive server at each concurrency and the answers that were not 2xx (429s apart), and writes the
rows to `benchmarks/results/serving.json` (`--out` elsewhere, `--no-save` for a look).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
WRK_SCRIPT = ROOT / "benchmarks" / "wrk_predict.lua"
SST2 = Path(os.environ.get("DISTILL_SST2_DIR", ROOT.parent / "shared" / "data" / "sst2"))
PY = sys.executable


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dev_sentences() -> list[str]:
    lines = (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()
    column = lines[0].split("\t").index("content")
    return [line.split("\t")[column] for line in lines[1:]]


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args!r} exited with code {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not come up in time")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def service_env(work: Path) -> dict[str, str]:
    """The service's environment: its own data directory, every other setting at its default."""
    return {**os.environ, "DISTILL_DATA_DIR": str(work / "data"), "HF_HUB_OFFLINE": "1"}


def require_wrk() -> str:
    """The `wrk` binary, or exit saying how to install it."""
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("serving.py drives the servers with wrk, which is not on the PATH: "
                         "`apt-get install wrk` (Debian/Ubuntu) or `brew install wrk` (macOS).")
    return found


def make_key(env: dict[str, str]) -> str:
    out = subprocess.run([PY, "-m", "distill_cli", "keys", "create", "--tenant", "bench"], env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


def find_student(client: httpx.Client) -> dict[str, Any] | None:
    models = client.get("/v1/models", params={"limit": 100}).json()["data"]
    students = [m for m in models if m.get("source") == "distilled"
                and m.get("task") == "sequence-classification"]
    return max(students, key=lambda m: m["created_at"]) if students else None


def distil_student(client: httpx.Client) -> dict[str, Any]:
    """The demo's recipe through the API (upload, job, follow): the student to serve."""
    from distill_cli.demo import _check, _follow, _split_tsv, demo_job

    labelled, texts = _split_tsv(SST2 / "train.tsv", 8000, 8000)
    train = _check(client.post("/v1/files", data={"purpose": "train"},
                               files={"file": ("train.tsv", labelled, "text/tsv")}))
    dev = _check(client.post("/v1/files", data={"purpose": "validation"},
                             files={"file": ("dev.tsv", (SST2 / "dev.tsv").read_bytes(), "text/tsv")}))
    extra = _check(client.post("/v1/files", data={"purpose": "unlabeled"},
                               files={"file": ("texts.jsonl", texts, "application/jsonl")}))
    job = _check(client.post("/v1/distillation/jobs",
                             json=demo_job(train["id"], dev["id"], extra["id"], epochs=1)))
    job = _follow(client, job["id"])
    if job["status"] != "succeeded":
        raise SystemExit(f"the student's job {job['status']}: {job['error']}")
    return _check(client.get(f"/v1/models/{job['result_model']}"))


def prepare_student(work: Path) -> dict[str, Any]:
    """A distilled SST-2 student in the work directory's service (distilled when absent)."""
    env = service_env(work)
    port = free_port()
    proc = subprocess.Popen([PY, "-m", "distill_cli", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{port}/readyz", proc)
        key = make_key(env)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            model = find_student(client)
            if model is None:
                print("No distilled student in", work, "- distilling one (~8 min).", flush=True)
                model = distil_student(client)
            return model
    finally:
        stop(proc)


def ceiling(model_dir: Path, runtime: str, texts: list[str], seconds: float = 10.0) -> float:
    """Rows per second of batched classify (batch 32) on the loaded student, no HTTP."""
    from distillation.export.predictors import load_predictor

    predictor = load_predictor(model_dir, runtime)  # type: ignore[arg-type]
    batches = [texts[i : i + 32] for i in range(0, len(texts) - 31, 32)]
    predictor.classify(batches[0])
    rows, start, index = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        predictor.classify(batches[index % len(batches)])
        rows += 32
        index += 1
    return rows / (time.perf_counter() - start)


def load(wrk: str, url: str, texts_file: Path, concurrency: int, seconds: int, key: str | None,
         runtime: str | None) -> dict[str, Any]:
    """One cell: `wrk` on one thread with `concurrency` connections for `seconds` (after a
    2-second warm-up that is not counted): its JSON line (`benchmarks/wrk_predict.lua`)."""
    script = ["-s", str(WRK_SCRIPT), url, "--", str(texts_file), key or "", runtime or ""]
    subprocess.run([wrk, "-t1", f"-c{concurrency}", "-d2s", *script], capture_output=True,
                   check=True)
    out = subprocess.run([wrk, "-t1", f"-c{concurrency}", f"-d{seconds}s", "--latency",
                          *script], capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def machine() -> dict[str, Any]:
    import torch

    return {"cpus": len(os.sched_getaffinity(0)), "processor": platform.processor() or
            platform.machine(), "python": platform.python_version(), "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/distill-serving"))
    parser.add_argument("--seconds", type=int, default=12, help="Measured seconds per cell.")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--runtimes", nargs="+", default=None,
                        help="Runtimes of the service to name in each call (default: none, "
                        "so the model's default runtime serves).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--prepare-only", action="store_true",
                        help="Distil (or find) the student in --work, then stop.")
    parser.add_argument("--ceiling-of", nargs=2, metavar=("MODEL_DIR", "RUNTIME"),
                        help=argparse.SUPPRESS)  # the ceiling's own process
    args = parser.parse_args()
    texts = dev_sentences()
    if args.ceiling_of:
        print(json.dumps({"rows_per_s": ceiling(Path(args.ceiling_of[0]), args.ceiling_of[1],
                                                texts)}))
        return

    wrk = require_wrk()
    args.work.mkdir(parents=True, exist_ok=True)
    texts_file = args.work / "dev-sentences.txt"
    texts_file.write_text("".join(" ".join(text.split()) + "\n" for text in texts))
    model = prepare_student(args.work)
    if args.prepare_only:
        print(f"Student {model['id']} ready in {args.work}.")
        return
    model_dir = args.work / "data" / "models" / model["id"]
    from distillation.export.runtimes import available_runtimes, runtimes_info

    info = runtimes_info(model_dir)
    default = str(info.get("default", "torch"))
    asked: list[str | None] = list(args.runtimes or [None])
    print(f"Student {model['id']}: {model['parameters']:,} parameters; runtimes "
          f"{available_runtimes(model_dir)}; default {default}", flush=True)

    rows: list[dict[str, Any]] = []
    env = service_env(args.work)
    api_port, naive_port = free_port(), free_port()
    api = subprocess.Popen([PY, "-m", "distill_cli", "api", "--port", str(api_port)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{api_port}/healthz", api)
        key = make_key(env)
        url = f"http://127.0.0.1:{api_port}/v1/models/{model['id']}/predict"
        for runtime in asked:
            for concurrency in args.concurrency:
                result = load(wrk, url, texts_file, concurrency, args.seconds, key, runtime)
                rows.append({"server": "distill", "runtime": runtime or default,
                             "concurrency": concurrency, **result})
                print(rows[-1], flush=True)
    finally:
        stop(api)

    naive = subprocess.Popen([PY, str(ROOT / "benchmarks" / "naive_server.py"), "--model",
                              str(model_dir), "--port", str(naive_port)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_up(f"http://127.0.0.1:{naive_port}/docs", naive)
        for concurrency in args.concurrency:
            result = load(wrk, f"http://127.0.0.1:{naive_port}/predict", texts_file,
                          concurrency, args.seconds, None, None)
            rows.append({"server": "naive-pipeline", "runtime": "torch",
                         "concurrency": concurrency, **result})
            print(rows[-1], flush=True)
    finally:
        stop(naive)

    ceilings: dict[str, float] = {}
    for runtime in sorted({row["runtime"] for row in rows if row["server"] == "distill"}):
        out = subprocess.run([PY, __file__, "--ceiling-of", str(model_dir), runtime], env=env,
                             capture_output=True, text=True, check=True)
        ceilings[runtime] = round(json.loads(out.stdout.strip().splitlines()[-1])["rows_per_s"], 1)
    ratios = ratios_of(rows, default)
    print_table(rows, ceilings, info, ratios)
    if not args.no_save:
        payload = {
            "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "machine": machine(),
            "model": {"id": model["id"], "parameters": model["parameters"],
                      "runtimes": info.get("runtimes"), "default_runtime": info.get("default")},
            "settings": "the service's defaults (rate limits on)",
            "load_generator": "wrk -t1 --latency, benchmarks/wrk_predict.lua",
            "ceiling_rows_per_s": ceilings,
            "ratio_to_naive": ratios,
            "rows": rows,
        }
        args.out.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"Rows written to {args.out}")


def ratios_of(rows: list[dict[str, Any]], runtime: str) -> dict[str, float]:
    """The service's requests/s in `runtime` over the naive server's, per concurrency."""
    naive = {r["concurrency"]: r["rps"] for r in rows if r["server"] == "naive-pipeline"}
    return {str(r["concurrency"]): round(r["rps"] / naive[r["concurrency"]], 2) for r in rows
            if r["server"] == "distill" and r["runtime"] == runtime
            and naive.get(r["concurrency"])}


def print_table(rows: list[dict[str, Any]], ceilings: dict[str, float],
                info: dict[str, Any], ratios: dict[str, float]) -> None:
    print(f"\n{'server':<16}{'runtime':<11}{'conc.':>6}{'requests':>10}{'req/s':>9}"
          f"{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}{'429':>7}{'% ceiling':>11}")
    for row in rows:
        share = row["rps"] / ceilings[row["runtime"]] if row["runtime"] in ceilings else None
        print(f"{row['server']:<16}{row['runtime']:<11}{row['concurrency']:>6}"
              f"{row['requests']:>10}{row['rps']:>9.1f}{row['p50_ms']:>9.2f}"
              f"{row['p99_ms']:>9.2f}{row['non_2xx']:>9}{row['status_429']:>7}"
              + (f"{share:>10.0%}" if share is not None else ""))
    print("service / naive, requests/s: "
          + ", ".join(f"{ratio:.2f}x at {conc}" for conc, ratio in ratios.items()))
    print("ceiling (batched forward, batch 32, no HTTP): "
          + ", ".join(f"{name} {value:.0f} rows/s" for name, value in ceilings.items()))
    for name, figures in (info.get("runtimes") or {}).items():
        if figures:
            print(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
