"""The predictor cache under load: bounded by bytes as well as count, one load per model (a cold
model never holds up another), and requests waiting for a model hold no thread that
authentication and `/healthz` need."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from app.inference.cache import PredictorCache
from distillation.export.predictors import load_predictor
from distillation.export.runtimes import Runtime, ServingPredictor
from tests.factories.api import dir_members, tar_gz
from tests.factories.api import upload_archive as upload

# More waiting predicts than the server's thread pool has threads (anyio's default is 40).
WAITING = 48
# Long enough for any request on a busy machine; only reached when a request is stuck.
STUCK_S = 60


class GatedLoader:
    """Loads models for real, but holds each `gated` model's load until `open` is set."""

    def __init__(self, gated: set[Path]) -> None:
        self.gated = gated
        self.open = threading.Event()
        self.loading = threading.Event()
        self.loads: list[Path] = []

    def __call__(self, model_dir: Path, runtime: Runtime) -> ServingPredictor:
        self.loads.append(model_dir)
        if model_dir in self.gated:
            self.loading.set()
            self.open.wait(STUCK_S * 2)
        return load_predictor(model_dir, runtime)


def _model(client: Any, auth: dict[str, str], model_dir: Path) -> dict[str, Any]:
    response = upload(client, auth, tar_gz(dir_members(model_dir)))
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_health_auth_and_other_models_answer_while_predicts_wait_for_a_load(
    client: Any, auth: dict[str, str], settings: Any, tiny_teacher_dir: Path
) -> None:
    # Given two models, the first of which takes until released to load
    slow, fast = _model(client, auth, tiny_teacher_dir), _model(client, auth, tiny_teacher_dir)
    slow_dir = settings.models_dir / slow["id"]
    loader = GatedLoader({slow_dir})
    client.app.state.predictors = PredictorCache(loader=loader)
    body = {"inputs": ["a lovely film"]}
    results: dict[str, Any] = {}

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api",
                                     timeout=STUCK_S * 3) as http:

            async def post(url: str, key: int) -> None:
                results[f"predict-{key}"] = await http.post(url, headers=auth, json=body)

            async with anyio.create_task_group() as group:
                # When more predicts than the server has threads wait for the slow model
                for n in range(WAITING):
                    group.start_soon(post, f"/v1/models/{slow['id']}/predict", n)
                await anyio.to_thread.run_sync(loader.loading.wait, STUCK_S)
                await anyio.sleep(1)
                # Then /healthz, an authenticated read and the other model still answer
                with anyio.move_on_after(STUCK_S):
                    results["healthz"] = await http.get("/healthz")
                    results["auth"] = await http.get(f"/v1/models/{fast['id']}", headers=auth)
                    results["other"] = await http.post(f"/v1/models/{fast['id']}/predict",
                                                       headers=auth, json=body)
                loader.open.set()

    anyio.run(scenario)

    assert {name: r.status_code for name, r in results.items()
            if not name.startswith("predict")} == {"healthz": 200, "auth": 200, "other": 200}
    # And once loaded, the slow model answers every waiting request, loaded once
    assert [results[f"predict-{n}"].status_code for n in range(WAITING)] == [200] * WAITING
    assert sorted(map(str, loader.loads)) == sorted([str(slow_dir), str(settings.models_dir /
                                                                         fast["id"])])


class _Echo:
    """A stand-in model for the cache's bookkeeping: each input's row names the loaded object."""

    task = "sequence-classification"

    def classify(self, inputs: Any) -> list[dict[str, Any]]:
        return [{"by": self} for _ in inputs]

    def generate(self, inputs: Any, max_new_tokens: int) -> list[dict[str, Any]]:
        raise NotImplementedError


def _fake_cache(tmp_path: Path, **bounds: Any) -> tuple[PredictorCache, list[str], list[Path]]:
    loads: list[str] = []

    def loader(path: Path, runtime: Runtime) -> Any:
        loads.append(path.name)
        return _Echo()

    cache = PredictorCache(loader=loader, **bounds)
    dirs = []
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
        dirs.append(tmp_path / name)
    return cache, loads, dirs


def _use(cache: PredictorCache, model_dir: Path, size: int) -> Any:
    future = cache.submit(model_dir.name, "torch", model_dir, size, ["x"])
    return future.result(timeout=STUCK_S)[0]["by"]


def test_cache_loads_once_and_evicts_by_count(tmp_path: Path) -> None:
    cache, loads, (a, b, c) = _fake_cache(tmp_path, max_models=2)

    threads = [threading.Thread(target=_use, args=(cache, a, 1)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first = _use(cache, a, 1)
    _use(cache, b, 1)
    _use(cache, a, 1)  # a is now the most recent
    _use(cache, c, 1)  # evicts b

    assert loads == ["a", "b", "c"]
    assert cache.model_ids() == ["a", "c"]
    assert _use(cache, a, 1) is first
    _use(cache, b, 1)
    assert loads[-1] == "b"


def test_cache_evicts_by_bytes(tmp_path: Path) -> None:
    cache, loads, (a, b, c) = _fake_cache(tmp_path, max_models=4, max_bytes=100)

    _use(cache, a, 40)
    _use(cache, b, 50)
    assert (cache.model_ids(), cache.size_bytes()) == (["a", "b"], 90)
    _use(cache, c, 30)  # 120 bytes: a, the least recently used, goes
    assert (cache.model_ids(), cache.size_bytes()) == (["b", "c"], 80)
    _use(cache, a, 60)  # 140 bytes: b goes, and is freed before a loads
    assert (cache.model_ids(), cache.size_bytes()) == (["c", "a"], 90)
    assert loads == ["a", "b", "c", "a"]


def test_a_model_over_the_byte_bound_is_refused_not_loaded(
    client: Any, auth: dict[str, str], tiny_teacher_dir: Path
) -> None:
    # Given a server whose predict cache holds fewer bytes than the model's weights
    model = _model(client, auth, tiny_teacher_dir)
    loads: list[Path] = []
    client.app.state.predictors = PredictorCache(
        max_bytes=model["size_bytes"] - 1, loader=lambda path, runtime: loads.append(path))

    response = client.post(f"/v1/models/{model['id']}/predict", headers=auth,
                           json={"inputs": ["a lovely film"]})

    # Then it is refused, naming the setting, and nothing was loaded
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "model_too_large"
    assert "DISTILL_PREDICT_CACHE_BYTES" in response.json()["error"]["message"]
    assert loads == []


class _Weights:
    """A stand-in model whose rows hold no reference to it (so it dies when the cache drops it)."""

    task = "sequence-classification"

    def __init__(self, name: str) -> None:
        self.name = name

    def classify(self, inputs: Any) -> list[dict[str, Any]]:
        time.sleep(0.002)  # a forward pass: calls queue up behind it
        return [{"by": self.name} for _ in inputs]

    def generate(self, inputs: Any, max_new_tokens: int) -> list[dict[str, Any]]:
        raise NotImplementedError


class LiveModels:
    """A loader that counts loads and the model objects alive (weakrefs), recording the most
    models and bytes alive at any moment and any two live copies of one model."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.lock = threading.Lock()
        self.live: dict[str, int] = {}  # model -> live copies
        self.loads: dict[str, int] = {}
        self.most_models = self.most_bytes = self.most_copies = 0

    def __call__(self, path: Path, runtime: Runtime) -> Any:
        time.sleep(0.01)  # loading takes a while: calls pile up meanwhile
        model = _Weights(path.name)
        with self.lock:
            self.loads[path.name] = self.loads.get(path.name, 0) + 1
            self.live[path.name] = self.live.get(path.name, 0) + 1
            self.most_models = max(self.most_models, sum(self.live.values()))
            self.most_bytes = max(self.most_bytes, sum(self.sizes[m] * n
                                                       for m, n in self.live.items()))
            self.most_copies = max(self.most_copies, self.live[path.name])
        weakref.finalize(model, self._freed, path.name)
        return model

    def _freed(self, name: str) -> None:
        with self.lock:
            self.live[name] -= 1


@pytest.mark.parametrize("bound", ["count", "bytes"])
def test_cycling_more_models_than_slots_keeps_the_bound_at_every_moment(
    tmp_path: Path, bound: str
) -> None:
    # Given 3 models and room for 2 (by count, or by bytes: 2 of them fit in 100)
    sizes = {"a": 40, "b": 50, "c": 45}
    loader = LiveModels(sizes)
    if bound == "count":
        cache = PredictorCache(loader=loader, max_models=2)
    else:
        cache = PredictorCache(loader=loader, max_models=10, max_bytes=100)
    dirs = {name: tmp_path / name for name in sizes}
    for path in dirs.values():
        path.mkdir()
    calls = 0

    # When 6 clients cycle through the 3 models at once, 30 calls each
    def client(offset: int) -> None:
        nonlocal calls
        for n in range(30):
            name = "abc"[(n + offset) % 3]
            future = cache.submit(name, "torch", dirs[name], sizes[name], ["x"])
            assert future.result(timeout=STUCK_S) == [{"by": name}]
            calls += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(STUCK_S)
    gc.collect()

    # Then at no moment were more models (or bytes) alive than the bound allows, never two
    # copies of one model, and every load but the first two followed an eviction that freed one
    assert calls == 180
    print(f"{bound}: {sum(loader.loads.values())} loads for {calls} calls, most alive "
          f"{loader.most_models} models, {loader.most_bytes} bytes, {loader.most_copies} copies")
    assert loader.most_models <= 2 and loader.most_bytes <= 100 and loader.most_copies == 1
    assert sum(loader.loads.values()) == cache.loads == cache.evictions + cache.loaded()
    assert sum(loader.live.values()) == cache.loaded() <= 2


def test_failed_load_is_retried(tmp_path: Path) -> None:
    attempts: list[Path] = []

    def flaky(path: Path, runtime: Runtime) -> Any:
        attempts.append(path)
        if len(attempts) == 1:
            raise OSError("disk hiccup")
        return _Echo()

    cache = PredictorCache(loader=flaky)
    with pytest.raises(OSError):
        cache.submit("m", "torch", tmp_path, 1, ["x"]).result(timeout=STUCK_S)
    assert cache.submit("m", "torch", tmp_path, 1, ["x"]).result(timeout=STUCK_S)
    assert len(attempts) == 2
