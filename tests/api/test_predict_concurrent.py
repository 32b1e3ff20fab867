"""`POST /v1/models/{id}/predict` under concurrency: concurrent first calls load the model once and
share a forward pass, and bad requests sent among good ones fail alone, each naming its field."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from app.inference.cache import PredictorCache
from app.inference.stats import BatchLog
from distillation.export.predict import Predictor
from distillation.export.predictors import load_predictor
from distillation.export.runtimes import Runtime, ServingPredictor
from tests.api.test_batching import Poisoned, assert_same_rows
from tests.factories.api import assert_error, dir_members, tar_gz
from tests.factories.api import upload_archive as upload
from tests.factories.lm import save_gpt2

STUCK_S = 60


class HeldLoader:
    """Loads models for real (wrapped in `Poisoned`), each load held until `release` is set."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.loads: list[tuple[str, str]] = []

    def __call__(self, model_dir: Path, runtime: Runtime) -> ServingPredictor:
        self.loads.append((model_dir.name, runtime))
        self.release.wait(STUCK_S)
        predictor = load_predictor(model_dir, runtime)
        assert isinstance(predictor, Predictor)
        return Poisoned(predictor, poison="boom")


def _upload(client: Any, auth: dict[str, str], model_dir: Path) -> str:
    response = upload(client, auth, tar_gz(dir_members(model_dir)))
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _serve(client: Any, requests: dict[str, tuple[str, dict[str, Any]]], auth: dict[str, str],
           cache: PredictorCache, *, model_id: str, batched: int) -> dict[str, httpx.Response]:
    """Send every request at once; the model's load is held until `batched` calls wait for it."""
    loader = cache._loader
    assert isinstance(loader, HeldLoader)
    results: dict[str, httpx.Response] = {}

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api",
                                     timeout=STUCK_S * 2) as http:

            async def post(name: str, url: str, body: dict[str, Any]) -> None:
                results[name] = await http.post(url, headers=auth, json=body)

            async with anyio.create_task_group() as group:
                for name, (url, body) in requests.items():
                    group.start_soon(post, name, url, body)
                with anyio.fail_after(STUCK_S):
                    while cache.queued(model_id, "torch") < batched - 1:  # one is loading
                        await anyio.sleep(0.005)
                loader.release.set()

    anyio.run(scenario)
    return results


@pytest.fixture
def classifier(client: Any, auth: dict[str, str], tiny_teacher_dir: Path) -> str:
    return _upload(client, auth, tiny_teacher_dir)


def _held_cache(client: Any) -> tuple[PredictorCache, BatchLog]:
    log = BatchLog()
    cache = client.app.state.predictors = PredictorCache(loader=HeldLoader(), on_batch=log,
                                                         max_batch=64)
    return cache, log


def test_concurrent_first_calls_load_once_and_share_a_forward_pass(
    client: Any, auth: dict[str, str], classifier: str, tiny_teacher_dir: Path
) -> None:
    # Given a cold model and eight callers at once
    cache, log = _held_cache(client)
    url = f"/v1/models/{classifier}/predict"
    bodies = {f"call-{n}": {"inputs": [f"film number {n}"] + ["so good"] * (n % 3)}
              for n in range(8)}

    results = _serve(client, {name: (url, body) for name, body in bodies.items()}, auth, cache,
                     model_id=classifier, batched=len(bodies))

    # Then the model loaded once, one forward pass served all eight, and each got its rows
    assert cache._loader.loads == [(classifier, "torch")]  # type: ignore[attr-defined]
    assert [(b.requests, b.rows) for b in log.recent()] == [
        (8, sum(len(b["inputs"]) for b in bodies.values()))]
    alone = Predictor.load(tiny_teacher_dir)
    for name, body in bodies.items():
        assert results[name].status_code == 200, results[name].text
        answer = results[name].json()
        assert (answer["model"], answer["runtime"]) == (classifier, "torch")
        assert_same_rows(answer["data"], [alone.classify([text])[0] for text in body["inputs"]])


def test_bad_requests_fail_alone_among_good_ones(
    client: Any, auth: dict[str, str], classifier: str, tiny_teacher_dir: Path,
    settings: Any, tmp_path: Path,
) -> None:
    # Given a classifier, a deleted model, and a causal LM
    cache, log = _held_cache(client)
    gone = _upload(client, auth, tiny_teacher_dir)
    assert client.delete(f"/v1/models/{gone}", headers=auth).status_code in (200, 204)
    lm = _upload(client, auth, save_gpt2(tmp_path / "lm"))
    url = f"/v1/models/{classifier}/predict"
    good: dict[str, tuple[str, dict[str, Any]]] = {
        f"good-{n}": (url, {"inputs": [f"film {n}", ["a plot", "that works"]]}) for n in range(5)}
    bad: dict[str, tuple[str, dict[str, Any]]] = {
        "empty": (url, {"inputs": []}),
        "too_many": (url, {"inputs": ["x"] * (settings.predict_max_inputs + 1)}),
        "too_long": (url, {"inputs": ["x" * (settings.predict_max_chars + 1)]}),
        "unknown_runtime": (url, {"inputs": ["x"], "runtime": "tensorrt"}),
        "no_onnx": (url, {"inputs": ["x"], "runtime": "onnx"}),
        "no_int8": (url, {"inputs": ["x"], "runtime": "onnx-int8"}),
        "training_job": ("/v1/models/job-0123456789abcdef/predict", {"inputs": ["x"]}),
        "deleted": (f"/v1/models/{gone}/predict", {"inputs": ["x"]}),
        "lm_pairs": (f"/v1/models/{lm}/predict", {"inputs": [["a", "b"]]}),
        # Passes every check, then fails inside the forward pass it shares with the good calls
        "model_fails": (url, {"inputs": ["fine", "boom"]}),
    }

    # When all are sent at once
    results = _serve(client, {**good, **bad}, auth, cache, model_id=classifier,
                     batched=len(good) + 1)

    # Then each bad one gets its own error, naming the field
    assert_error(results["empty"], 400, param="inputs")
    assert_error(results["too_many"], 422, code="too_many_inputs", param="inputs")
    assert_error(results["too_long"], 422, code="input_too_long", param="inputs[0]")
    assert_error(results["unknown_runtime"], 422, param="runtime")
    assert_error(results["no_onnx"], 400, code="runtime_unavailable", param="runtime")
    assert_error(results["no_int8"], 400, code="runtime_unavailable", param="runtime")
    assert_error(results["training_job"], 404, param="model_id")
    assert_error(results["deleted"], 404, param="model_id")
    assert_error(results["lm_pairs"], 400, param="inputs")
    assert_error(results["model_fails"], 500, code="internal_error")
    # And the good ones, batched with the failing call, are answered as if alone
    alone = Predictor.load(tiny_teacher_dir)
    for name, (_, body) in good.items():
        assert results[name].status_code == 200, results[name].text
        assert_same_rows(results[name].json()["data"], alone.classify(body["inputs"]))
    batches = [(b.requests, b.ok) for b in log.recent()]
    assert batches[0] == (len(good) + 1, False) and len(batches) == 1 + len(good) + 1
    assert cache.model_ids() == [classifier]  # the bad requests loaded nothing


def test_lm_serves_its_default_runtime(client: Any, auth: dict[str, str], tmp_path: Path) -> None:
    lm = _upload(client, auth, save_gpt2(tmp_path / "lm"))

    response = client.post(f"/v1/models/{lm}/predict", headers=auth,
                           json={"inputs": ["red cat", "blue"], "max_new_tokens": 2})

    assert response.status_code == 200, response.text
    assert response.json()["runtime"] == "torch" and len(response.json()["data"]) == 2
    assert_error(client.post(f"/v1/models/{lm}/predict", headers=auth,
                             json={"inputs": ["red"], "runtime": "onnx"}),
                 400, code="runtime_unavailable", param="runtime")
