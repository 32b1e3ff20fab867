"""`distill demo`: the whole product on embedded defaults, as a new user would drive it over HTTP.

Serve → create a key → upload SST-2 (labelled rows, unlabelled texts) → distil the built-in MiniLM
(fine-tuned first) into a student the service sizes 4x smaller → follow the job → download the
model → predict → print the report.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from app.settings import get_settings
from distill_cli.processes import stop_process
from distill_cli.report import report_table

console = Console()
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # distill_cli/ is at the project root
DEFAULT_SST2 = PROJECT_ROOT.parent / "shared" / "data" / "sst2"
SENTENCES = [
    "a gorgeous , witty , seductive movie .",
    "the acting is wooden and the plot is a mess .",
    "an utterly charming and hilarious film .",
    "it 's a dull , lifeless and boring affair .",
]


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _split_tsv(path: Path, rows: int | None, transfer: int,
               seed: int = 0) -> tuple[bytes, bytes]:
    """A random sample of `rows` labelled SST-2 training rows (all of them for None) as TSV, and
    `transfer` other rows' sentences, labels dropped, as JSONL (the team's unlabelled text)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header, body = lines[0], lines[1:]
    random.Random(seed).shuffle(body)
    labelled = body if rows is None else body[:rows]
    rest = [] if rows is None else body[rows : rows + transfer]
    column = header.split("\t").index("sentence")
    texts = "".join(json.dumps({"sentence": line.split("\t")[column]}) + "\n" for line in rest)
    return ("\n".join([header, *labelled]) + "\n").encode(), texts.encode()


def _check(response: httpx.Response) -> dict[str, Any]:
    if response.is_error:
        raise SystemExit(f"{response.request.method} {response.request.url.path} → "
                         f"{response.status_code}: {response.text}")
    return dict(response.json())


def _wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"`distill serve` exited with code {proc.returncode}")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the service did not become ready in time")


def _follow(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Show the job's stages with a progress bar and its metric events until it finishes."""
    last_event: str | None = None
    columns = (TextColumn("{task.description:<18}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
               TextColumn("step {task.fields[step]}/{task.fields[steps]}"), TimeRemainingColumn())
    bars: dict[str, Any] = {}
    with Progress(*columns, console=console) as progress:
        while True:
            job = _check(client.get(f"/v1/distillation/jobs/{job_id}"))
            params: dict[str, str | int] = {"limit": 100}
            if last_event:
                params["after"] = last_event
            for event in _check(client.get(f"/v1/distillation/jobs/{job_id}/events",
                                           params=params))["data"]:
                last_event = event["id"]
                style = {"warning": "yellow", "error": "red"}.get(event["level"], "dim")
                progress.console.print(f"[{style}]· {event['message']}[/{style}]")
            stage = job["progress"].get("stage")
            if stage:
                for done in bars:
                    if done != stage:
                        progress.update(bars[done], completed=100, step="done", steps="done")
                if stage not in bars:
                    bars[stage] = progress.add_task(stage, total=100, step=0, steps=0)
                p = job["progress"]
                progress.update(bars[stage], completed=p["percent"], step=p["step"],
                                steps=p["total_steps"])
            if job["status"] in ("succeeded", "failed", "cancelled"):
                if job["status"] == "succeeded":
                    for bar in bars.values():
                        progress.update(bar, completed=100, step="done", steps="done")
                return job
            time.sleep(1.0)


@contextmanager
def demo_service(port: int) -> Iterator[httpx.Client]:
    """`distill serve` on a free port near `port`, and a client holding a new key of tenant
    'demo'; the service is stopped on the way out."""
    settings = get_settings()
    port = _free_port(port)
    base = f"http://127.0.0.1:{port}"
    console.print(f"Starting `distill serve` on {base} (data in {settings.resolved_data_dir})")
    proc = subprocess.Popen([sys.executable, "-m", "distill_cli", "serve", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with httpx.Client(base_url=base, timeout=120) as client:
            _wait_ready(client, proc)
            out = subprocess.run([sys.executable, "-m", "distill_cli", "keys", "create",
                                  "--tenant", "demo"], capture_output=True, text=True, check=True)
            client.headers["Authorization"] = f"Bearer {out.stdout.split()[-1]}"
            console.print("Created an API key for tenant 'demo'.")
            yield client
    finally:
        stop_process(proc, sig=signal.SIGINT, timeout=30)


def download_model(client: httpx.Client, model_id: str) -> Path:
    """The model's Hugging Face directory, unpacked under the current folder."""
    target = Path.cwd() / f"distilled-{model_id}"
    archive = client.get(f"/v1/models/{model_id}/download")
    archive.raise_for_status()
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(target, filter="data")
    console.print(f"Downloaded the student to {target}/ ({len(archive.content) / 1e6:.1f} "
                  "MB archive): a Hugging Face directory for from_pretrained().")
    return target


def sst2_folder(sst2_dir: Path | None) -> Path:
    """The SST-2 folder (train.tsv, dev.tsv): `--sst2-dir`, $DISTILL_SST2_DIR or the shared one."""
    sst2 = sst2_dir or Path(os.environ.get("DISTILL_SST2_DIR", DEFAULT_SST2))
    if not (sst2 / "train.tsv").exists() or not (sst2 / "dev.tsv").exists():
        raise SystemExit(f"SST-2 not found in {sst2}: pass --sst2-dir with train.tsv and dev.tsv")
    return sst2


def run_demo(*, rows: int | None, transfer: int, epochs: int, sst2_dir: Path | None,
             port: int) -> None:
    sst2 = sst2_folder(sst2_dir)
    console.rule("[bold]distill demo")
    with demo_service(port) as client:
        labelled, texts = _split_tsv(sst2 / "train.tsv", rows, transfer)
        train = _check(client.post("/v1/files", data={"purpose": "train"}, files={
            "file": ("sst2-train.tsv", labelled, "text/tsv")}))
        dev = _check(client.post("/v1/files", data={"purpose": "validation"}, files={
            "file": ("sst2-dev.tsv", (sst2 / "dev.tsv").read_bytes(), "text/tsv")}))
        unlabeled = None
        if texts:
            unlabeled = _check(client.post("/v1/files", data={"purpose": "unlabeled"}, files={
                "file": ("sst2-texts.jsonl", texts, "application/jsonl")}))
        console.print(f"Uploaded {train['id']} ({train['num_records']:,} labelled rows, "
                      f"columns {train['columns']}), {dev['id']} ({dev['num_records']} rows)"
                      + (f" and {unlabeled['id']} ({unlabeled['num_records']:,} unlabelled "
                         "texts)." if unlabeled else "."))

        body = demo_job(train["id"], dev["id"], unlabeled["id"] if unlabeled else None,
                        epochs)
        job = _check(client.post("/v1/distillation/jobs", json=body))
        console.print(
            f"Submitted {job['id']}: {job['teacher']['model']} (fine-tuned first) → a student "
            f"{job['student']['target']['compression']:g}x smaller, sized and initialised by "
            f"the service from the teacher, {job['hyperparameters']['epochs']} epoch(s)"
            + (" on the labelled rows and the unlabelled texts." if unlabeled else ".")
        )
        job = _follow(client, job["id"])
        if job["status"] != "succeeded":
            raise SystemExit(f"job {job['status']}: {job['error']}")

        model = _check(client.get(f"/v1/models/{job['result_model']}"))
        download_model(client, model["id"])

        predictions = _check(client.post(f"/v1/models/{model['id']}/predict",
                                         json={"inputs": SENTENCES}))["data"]
        console.print("Predictions of the served student (SST-2 labels: 1 positive, 0 negative):")
        for sentence, pred in zip(SENTENCES, predictions, strict=True):
            console.print(f"  {pred['label']:>3} ({pred['score']:.2f})  {sentence}")
        console.print(report_table(model))


def demo_job(train_id: str, dev_id: str, transfer_id: str | None,
             epochs: int) -> dict[str, Any]:
    """The demo's job, the recommended recipe: SST-2 columns remapped, the teacher fine-tuned on
    the labelled rows, a student the service sizes to 4x fewer parameters (vocabulary pruned),
    distilled on the labelled rows and the unlabelled texts."""
    return {
        "task": "sequence-classification",
        "teacher": {"model": "all-minilm-l6-v2", "finetune": {"epochs": 1}},
        "student": {"target": {"compression": 4}},
        "training_file": train_id,
        "validation_file": dev_id,
        **({"transfer_file": transfer_id} if transfer_id else {}),
        "data": {"text_column": "sentence", "validation_text_column": "content",
                 "label_column": "label", "max_seq_length": 64},
        "hyperparameters": {"epochs": epochs, "batch_size": 32, "learning_rate": 1e-4,
                            "seed": 42},
        "metadata": {"source": "distill demo"},
    }


__all__ = ["run_demo"]
