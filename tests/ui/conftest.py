"""The dashboard in a real browser: Debian's Chromium (/usr/bin/chromium) driven by Playwright,
against a live `distill api` and a real `distill worker` on the test database.

Playwright never downloads a browser here; where /usr/bin/chromium is missing the tests are
skipped with that reason (scripts/setup.sh installs it when it runs as root). Every page is
loaded with requests to anywhere but the API refused, so a page that needed the internet fails.
Screenshots go to `$DISTILL_UI_SCREENSHOTS` when set, else to a temporary folder (printed).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories.api import REDIS_URL, make_key, sentiment_files, upload_model_dir
from tests.factories.faults import hold_env
from tests.factories.server import live_api
from tests.factories.worker import start_worker, stop_worker

CHROMIUM = Path("/usr/bin/chromium")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        # CI must not go green with no browser test run: a missing browser fails the run.
        raise pytest.UsageError(f"Chromium not installed at {CHROMIUM}, and CI runs the dashboard's "
                                "browser tests: `make test` installs it (scripts/browser.sh)")
    skip = pytest.mark.skip(reason=f"Chromium not installed at {CHROMIUM}: the dashboard's browser "
                            "tests are skipped (`make test` installs Debian's chromium: scripts/browser.sh)")
    for item in items:
        if "tests/ui/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)


@dataclass
class Dash:
    url: str
    key: str
    auth: dict[str, str]
    http: httpx.Client
    teacher: str
    train: str
    validation: str
    shots: Path
    settings: Any
    # The worker holds a job at step `HOLD_STEP` while this file is missing (it exists unless a
    # test removes it): a job page opened before the job ends, however fast the machine.
    release: Path


HOLD_STEP = 8


@pytest.fixture(scope="module")
def dash(pg_url: str, redis_db: int, tmp_path_factory: pytest.TempPathFactory,
         tiny_teacher_dir: Path) -> Iterator[Dash]:
    """A live API (events polled every 0.25 s) and a worker on one data directory, tenant acme's
    key, the tiny teacher and a toy data set uploaded."""
    from app.settings import get_settings
    from tests.conftest import _truncate_all

    data = tmp_path_factory.mktemp("ui")
    shots = Path(os.environ.get("DISTILL_UI_SCREENSHOTS") or data / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DISTILL_DATABASE_URL", pg_url)
        env.setenv("DISTILL_BROKER_URL", f"{REDIS_URL}/{redis_db}")
        env.setenv("DISTILL_DATA_DIR", str(data / "data"))
        get_settings.cache_clear()
        _truncate_all(pg_url)
        import redis

        redis.Redis.from_url(f"{REDIS_URL}/{redis_db}").flushdb()
        config = get_settings()
        auth = make_key(config, "acme")
        # the model page downloads the ONNX int8 export: this worker exports runtimes
        release = data / "release"
        release.touch()
        worker = start_worker(config, log=data / "worker.log", DISTILL_RECONCILE_INTERVAL_S="3600",
                              DISTILL_EXPORT_RUNTIMES="true", **hold_env(HOLD_STEP, release))
        try:
            with live_api(config, data / "api.log", DISTILL_EVENTS_POLL_INTERVAL_S="0.25") as api, \
                    httpx.Client(base_url=api.url, timeout=60) as http:
                train, validation = sentiment_files(http, auth, train=64, validation=16)
                teacher = upload_model_dir(http, auth, tiny_teacher_dir)["id"]
                yield Dash(url=api.url, key=auth["Authorization"].removeprefix("Bearer "),
                           auth=auth, http=http, teacher=teacher, train=train,
                           validation=validation, shots=shots, settings=config,
                           release=release)
        finally:
            stop_worker(worker)
            get_settings.cache_clear()
    print(f"\ndashboard screenshots: {shots}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        yield chromium
        chromium.close()


@dataclass
class Watch:
    """What a page did that it should not: requests off this server, script errors."""

    offsite: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def watch() -> Watch:
    return Watch()


@pytest.fixture
def page(browser: Any, dash: Dash, watch: Watch) -> Iterator[Any]:
    """A fresh browser context (empty storage) whose only reachable server is the API."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    context.set_default_timeout(20_000)

    def guard(route: Any) -> None:
        if route.request.url.startswith(dash.url) or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            watch.offsite.append(route.request.url)
            route.abort()

    context.route("**/*", guard)
    tab = context.new_page()
    tab.on("pageerror", lambda exc: watch.errors.append(f"page error: {exc}"))
    tab.on("console", lambda msg: watch.errors.append(f"console: {msg.text}")
           if msg.type == "error" and "Failed to load resource" not in msg.text else None)
    yield tab
    context.close()
    assert watch.offsite == [], "the page asked for something off this server"
    assert watch.errors == []


def sign_in(page: Any, dash: Dash, *, next_path: str = "") -> None:
    """Sign in through the form; lands on `next_path` (default the jobs list)."""
    target = dash.url + "/ui/login" + (f"?next={next_path}" if next_path else "")
    page.goto(target)
    page.fill("#api-key", dash.key)
    page.click("#sign-in")
    page.wait_for_url(dash.url + (next_path or "/ui"))


def shot(page: Any, dash: Dash, name: str) -> None:
    page.screenshot(path=str(dash.shots / f"{name}.png"), full_page=True)
