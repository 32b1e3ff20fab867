"""The dashboard walked through in Chromium: sign in, the jobs list, a job followed live while a
real worker runs it, its model's page, the new-job form, the cancel button, escaping of what
users control, and /docs. Each test also fails if the page reached for anything off the server
or threw a script error (the `page` fixture)."""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.factories.api import job_body, upload_records
from tests.factories.records import sentiment_records
from tests.factories.worker import FINAL, wait_for
from tests.ui.conftest import HOLD_STEP, Dash, Watch, shot, sign_in

XSS_META = "<script>window.__xss = 'metadata'</script>"
XSS_IMG = "<img src=x onerror=\"window.__xss='img'\">"
XSS_FILE = "<img src=x onerror=window.__xss=1>.jsonl"


def create_job(dash: Dash, **overrides: Any) -> dict[str, Any]:
    body = job_body(teacher=dash.teacher, training_file=dash.train,
                    validation_file=dash.validation, **overrides)
    response = dash.http.post("/v1/distillation/jobs", headers=dash.auth, json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def stepped_job(dash: Dash, run: str, **hyperparameters: Any) -> dict[str, Any]:
    """A real job for the worker: 2 epochs of 8 steps, a metrics event every step."""
    return create_job(dash, metadata={"run": run}, hyperparameters={
        "epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "seed": 1, "log_every_steps": 1,
        **hyperparameters})


@pytest.fixture(scope="module")
def tiny_job(dash: Dash) -> dict[str, Any]:
    return stepped_job(dash, "dashboard")


def test_sign_in_refuses_a_bad_key_and_keeps_a_good_one_out_of_the_url(
    page: Any, dash: Dash, watch: Watch
) -> None:
    # An unsigned visitor is sent to the sign-in page
    page.goto(dash.url + "/ui")
    page.wait_for_url("**/ui/login?next=%2Fui")
    page.fill("#api-key", "not-a-key")
    page.click("#sign-in")
    page.wait_for_selector("#flash:not([hidden])")
    assert "not accepted" in page.inner_text("#flash")
    watch.errors.clear()  # the 401 is logged as a console error by design

    page.fill("#api-key", dash.key)
    page.click("#sign-in")
    page.wait_for_url(dash.url + "/ui")

    assert page.evaluate("sessionStorage.getItem('distill.apiKey')") == dash.key
    assert page.evaluate("localStorage.getItem('distill.apiKey')") is None
    assert dash.key not in page.url
    assert page.inner_text("#who").endswith(dash.key[-4:])
    shot(page, dash, "01-jobs-list-signed-in")


def test_jobs_list_shows_a_created_job_with_status_and_progress(
    page: Any, dash: Dash, tiny_job: dict[str, Any]
) -> None:
    sign_in(page, dash)
    row = page.locator(f"tr[data-job='{tiny_job['id']}']")
    row.wait_for()
    assert row.locator("a").get_attribute("href") == f"/ui/jobs/{tiny_job['id']}"
    assert row.locator(".status").inner_text() in {"queued", "running", "succeeded"}
    assert row.locator("progress").count() == 1
    assert "run=dashboard" in row.inner_text()


@pytest.fixture
def held_job(dash: Dash) -> Iterator[dict[str, Any]]:
    """A job as `tiny_job`, held by the worker at step `HOLD_STEP` until `dash.release` exists."""
    with held(dash, "dashboard-live") as job:
        yield job


@contextmanager
def held(dash: Dash, run: str, **hyperparameters: Any) -> Iterator[dict[str, Any]]:
    """A `stepped_job` held at step `HOLD_STEP` until `dash.release` exists, or the block ends
    (once the jobs of earlier tests have ended: the worker runs one at a time, and would hold
    theirs instead)."""
    deadline = time.monotonic() + 180
    while any(j["status"] not in FINAL for j in dash.http.get(
            "/v1/distillation/jobs?limit=100", headers=dash.auth).json()["data"]):
        assert time.monotonic() < deadline, "the jobs of earlier tests did not end"
        time.sleep(0.3)
    dash.release.unlink(missing_ok=True)
    try:
        yield stepped_job(dash, run, **hyperparameters)
    finally:
        dash.release.touch()


def test_job_page_follows_a_real_job_live(page: Any, dash: Dash, held_job: dict[str, Any]) -> None:
    # Given the job page open while the worker runs the job (held at step 8 until the page has
    # shown it running, then let go)
    sign_in(page, dash, next_path=f"/ui/jobs/{held_job['id']}")
    page.wait_for_selector("#live:not([hidden])")
    samples = []  # (status, loss points drawn, events listed), read from the page as it changes
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        sample = page.evaluate("""() => [
            document.querySelector('#job-status .status')?.textContent,
            (document.querySelector('#loss-chart polyline[data-series=train_loss]')
              ?.getAttribute('points') || '').split(' ').filter(Boolean).length,
            document.querySelectorAll('#events li').length]""")
        samples.append(tuple(sample))
        if sample[0] == "running" and sample[1] >= HOLD_STEP:
            dash.release.touch()  # shown running with a partial curve: let the job go on
        if sample[1] and len(samples) % 10 == 1:
            shot(page, dash, "02-job-running")
        if sample[0] in {"succeeded", "failed", "cancelled"}:
            break
        time.sleep(0.3)
    page.wait_for_selector("#live", state="hidden")  # `end` closed the stream
    shot(page, dash, "03-job-succeeded")

    # Then the page went through the run without a reload: the status moved on, and the loss
    # curve and the events grew while it was open
    statuses = [s[0] for s in samples]
    assert statuses[-1] == "succeeded", samples[-5:]
    assert ("running", HOLD_STEP) in [(s[0], s[1]) for s in samples], samples
    points = [s[1] for s in samples]
    assert points[-1] >= 16 and points[-1] > min(points), samples
    assert len({s[2] for s in samples}) > 1
    # every event once, as the API lists them
    events = dash.http.get(f"/v1/distillation/jobs/{held_job['id']}/events?limit=1000",
                           headers=dash.auth).json()["data"]
    assert page.locator("#events li").count() == len(events)
    shown = page.locator("#events li").evaluate_all("els => els.map(e => e.dataset.event)")
    assert shown == [e["id"] for e in reversed(events)]
    # stage bars all full, an evaluation curve per metric with a point per epoch, a result model
    bars = page.locator(".stage progress").evaluate_all("els => els.map(e => e.value)")
    assert page.locator(".stage").count() >= 3 and bars == [100] * len(bars)
    accuracy = page.locator("#eval-chart polyline[data-series=accuracy]").get_attribute("points")
    assert len(accuracy.split()) == 2
    assert page.locator("#job-facts a[href^='/ui/models/model-']").count() == 1
    assert page.locator("#cancel").is_disabled()


def test_job_page_lists_the_running_jobs_checkpoints_as_the_api_does(
    page: Any, dash: Dash
) -> None:
    # Given a job held at step 8 with a checkpoint every 2 steps (the last two kept: 4 and 6)
    with held(dash, "dashboard-checkpoints", checkpoint_every_steps=2) as job:
        deadline = time.monotonic() + 120
        listed: list[dict[str, Any]] = []
        while not listed or listed[0]["step"] < HOLD_STEP - 2:  # the last before the held step
            assert time.monotonic() < deadline, listed
            time.sleep(0.3)
            listed = dash.http.get(f"/v1/distillation/jobs/{job['id']}/checkpoints",
                                   headers=dash.auth).json()["data"]

        # When its page is opened, then the table shows each one the API lists, in its order
        sign_in(page, dash, next_path=f"/ui/jobs/{job['id']}")
        page.locator("#checkpoints tbody tr").first.wait_for()
        rows = page.locator("#checkpoints tbody tr").evaluate_all(
            "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
        assert [(r[0], int(r[1]), int(r[2])) for r in rows] == \
            [(c["id"], c["step"], c["epoch"]) for c in listed]
        assert [int(r[1]) for r in rows] == [HOLD_STEP - 2, HOLD_STEP - 4]
        assert page.locator("#checkpoints-empty").is_hidden()
        dash.http.post(f"/v1/distillation/jobs/{job['id']}/cancel", headers=dash.auth)


def test_sign_out_forgets_the_key_and_the_pages_ask_for_it_again(
    page: Any, dash: Dash, watch: Watch
) -> None:
    sign_in(page, dash)
    page.click("#sign-out")
    page.wait_for_url("**/ui/login")
    assert page.evaluate("sessionStorage.getItem('distill.apiKey')") is None
    assert page.evaluate("localStorage.getItem('distill.apiKey')") is None
    page.goto(dash.url + "/ui/models")
    page.wait_for_url("**/ui/login?next=%2Fui%2Fmodels")
    assert page.locator("#sign-out").is_hidden()
    assert watch.errors == ["page error: not signed in"]  # how a page stops, sent to sign in
    watch.errors.clear()


def test_model_page_shows_report_card_downloads_and_predicts(
    page: Any, dash: Dash, tiny_job: dict[str, Any], tmp_path: Any
) -> None:
    job = wait_for(dash.http, dash.auth, tiny_job["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", job
    model_id = job["result_model"]
    sign_in(page, dash, next_path=f"/ui/models/{model_id}")

    # The report: teacher and student side by side
    page.locator("#report tr[data-metric=accuracy]").wait_for()
    params = page.locator("#report tr[data-metric=parameters] td").all_inner_texts()
    assert len(params) == 2 and all(params) and params[0] != params[1]
    # The model card, rendered from markdown (its table too)
    page.locator("#card table").first.wait_for()
    assert "Teacher" in page.inner_text("#card")
    # its training curve, fetched with the key (the page's CSP rules out wait_for_function)
    curve = page.locator("#card img").first
    deadline = time.monotonic() + 20
    while not curve.evaluate("img => img.complete && img.naturalWidth > 0"):
        assert time.monotonic() < deadline, "the card's training curve never loaded"
        time.sleep(0.2)

    # Predict
    page.fill("#predict-inputs", "a wonderful, moving film\nthe worst thing I have seen")
    page.click("#predict")
    page.locator("#predictions tbody tr").nth(1).wait_for()
    labels = page.locator("#predictions td.prediction").all_inner_texts()
    assert len(labels) == 2 and set(labels) <= {"negative", "positive"}
    shot(page, dash, "04-model-page")

    # Download: the archive the API serves, saved from a blob
    with page.expect_download() as download_info:
        page.click("#download")
    saved = tmp_path / "model.tar.gz"
    download_info.value.save_as(saved)
    assert download_info.value.suggested_filename == f"{model_id}-hf.tar.gz"
    with tarfile.open(saved) as tar:
        names = set(tar.getnames())
    assert {"config.json", "README.md"} <= {n.split("/")[-1] for n in names}
    assert "model.onnx" not in {n.split("/")[-1] for n in names}

    # and the int8 ONNX export, picked in the format list
    page.select_option("#download-format", "onnx-int8")
    with page.expect_download() as download_info:
        page.click("#download")
    download_info.value.save_as(saved)
    assert download_info.value.suggested_filename == f"{model_id}-onnx-int8.tar.gz"
    with tarfile.open(saved) as tar:
        names = {n.split("/")[-1] for n in tar.getnames()}
    assert {"model.onnx", "config.json", "README.md"} <= names


def test_form_uploads_a_file_and_starts_a_job(page: Any, dash: Dash, tmp_path: Any) -> None:
    # Given a data file on disk
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sentiment_records(24, seed=5)))
    sign_in(page, dash, next_path="/ui/new")

    # When it is uploaded through the form and a job is started from the fields
    page.set_input_files("#upload-file", str(data))
    page.select_option("#upload-purpose", "train")
    page.click("#upload")
    page.wait_for_selector("#flash.ok")
    uploaded = page.locator("#files tr", has_text="reviews.jsonl").get_attribute("data-file")
    assert page.locator("#training-file").input_value() == uploaded
    page.fill("#teacher", dash.teacher)
    page.fill("#num-layers", "1")
    page.fill("#hidden-size", "32")
    page.fill("#num-heads", "2")
    page.fill("#intermediate-size", "64")
    page.fill("#max-seq-length", "32")
    page.fill("#epochs", "1")
    page.fill("#metadata", "owner=ui-test\nticket=42")
    shot(page, dash, "05-new-job-form")
    page.click("#create")
    page.wait_for_url("**/ui/jobs/job-*")
    job_id = page.url.rsplit("/", 1)[1]

    # Then the job holds exactly what the form said, and its page shows it
    job = dash.http.get(f"/v1/distillation/jobs/{job_id}", headers=dash.auth).json()
    dash.http.post(f"/v1/distillation/jobs/{job_id}/cancel", headers=dash.auth)  # spare the worker
    assert job["training_file"] == uploaded and job["validation_file"] is None
    assert job["teacher"]["model"] == dash.teacher
    assert job["student"]["architecture"] == {"num_layers": 1, "hidden_size": 32, "num_heads": 2,
                                              "intermediate_size": 64}
    assert job["hyperparameters"]["epochs"] == 1 and job["data"]["max_seq_length"] == 32
    assert job["metadata"] == {"owner": "ui-test", "ticket": "42"}
    page.locator("#job-facts", has_text="owner").wait_for()


def test_form_shows_the_apis_error_naming_the_field(page: Any, dash: Dash) -> None:
    sign_in(page, dash, next_path="/ui/new")
    page.wait_for_selector("#create:not([disabled])")  # the files are listed
    assert page.locator("#training-file").input_value().startswith("file-")
    page.fill("#teacher", "no-such-model")
    page.click("#create")
    page.wait_for_selector("#flash:not([hidden])")
    assert "teacher.model" in page.inner_text("#flash")


def test_start_job_waits_until_the_files_are_listed(page: Any, dash: Dash) -> None:
    # Given the files list held back (a slow API)
    held: list[Any] = []
    page.route("**/v1/files", lambda route: held.append(route))
    sign_in(page, dash, next_path="/ui/new")
    while not held:
        page.wait_for_timeout(50)

    # Then the form cannot be sent with no training file to choose (the browser would stop it
    # without a word); once the list arrives it can
    assert page.locator("#create").is_disabled()
    held[0].continue_()
    page.wait_for_selector("#create:not([disabled])")
    assert page.locator("#training-file").input_value().startswith("file-")


def test_cancel_button_cancels_the_job(page: Any, dash: Dash) -> None:
    job = create_job(dash)
    sign_in(page, dash, next_path=f"/ui/jobs/{job['id']}")
    page.wait_for_selector("#cancel:not([disabled])")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#cancel")

    page.wait_for_selector("#job-status .s-cancelled")
    assert dash.http.get(f"/v1/distillation/jobs/{job['id']}",
                         headers=dash.auth).json()["status"] == "cancelled"
    assert page.locator("#cancel").is_disabled()
    shot(page, dash, "06-job-cancelled")


def test_user_controlled_text_is_shown_as_text_never_run(page: Any, dash: Dash) -> None:
    # Given a file name and job metadata holding markup and script
    upload_records(dash.http, dash.auth, sentiment_records(8, seed=3), name=XSS_FILE)
    job = create_job(dash, metadata={"note": XSS_META, "<b>key</b>": XSS_IMG})
    dash.http.post(f"/v1/distillation/jobs/{job['id']}/cancel", headers=dash.auth)

    # When the pages that show them are opened (and a job id made of markup is visited)
    sign_in(page, dash)
    page.locator(f"tr[data-job='{job['id']}']").wait_for()
    list_text = page.inner_text("#jobs")
    page.goto(f"{dash.url}/ui/jobs/{job['id']}")
    page.locator("#job-facts", has_text="metadata.note").wait_for()
    job_text = page.inner_text("#job-facts")
    shot(page, dash, "07-xss-as-text")
    page.goto(f"{dash.url}/ui/new")
    page.locator("#files tr", has_text="onerror").wait_for()
    files_text = page.inner_text("#files")
    page.goto(dash.url + "/ui/jobs/%3Cimg%20src%3Dx%20onerror%3Dwindow.__xss%3D4%3E")
    page.wait_for_selector("#flash:not([hidden])")

    # Then every one is on screen as the literal text, and no script of theirs ran
    assert XSS_META in list_text and XSS_IMG in list_text
    assert XSS_META in job_text and "metadata.<b>key</b>" in job_text
    assert XSS_FILE in files_text
    assert "<img src=x onerror=window.__xss=4>" in page.inner_text("#flash")
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img, main script").count() == 0


def test_docs_render_offline(page: Any, dash: Dash) -> None:
    page.goto(dash.url + "/docs")
    page.locator(".swagger-ui .info .title", has_text="distill").wait_for()
    page.locator(".opblock-summary-path", has_text="/v1/distillation/jobs").first.wait_for()
    shot(page, dash, "08-docs")
