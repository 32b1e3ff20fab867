// The job page: facts, stage bars, loss and evaluation curves and events, all kept current by
// the job's live event stream; checkpoints re-read while it runs; a cancel button.
import {
  ApiError, apiJson, errorText, flash, fmtNumber, fmtTime, followJob, h, initChrome,
  modelLink, requireKey, statusBadge,
} from "./api.js";
import { lineChart } from "./chart.js";

requireKey();
initChrome("");
const jobId = document.getElementById("main").dataset.jobId;
const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
const STAGES = ["finetune_teacher", "cache_teacher", "distill", "evaluate", "export"];
const STAGE_NAMES = {
  finetune_teacher: "Fine-tune teacher", cache_teacher: "Cache teacher outputs",
  distill: "Distil", evaluate: "Evaluate", export: "Export",
};

let job = null;
const started = new Set(); // stages an event says have started
const loss = new Map(); // series name -> [[step, value]]
const evals = new Map();

function add(series, name, point) {
  if (!series.has(name)) series.set(name, []);
  const points = series.get(name);
  // A resumed attempt reports a step again: keep the newest value per step.
  const same = points.findIndex((p) => p[0] === point[0]);
  if (same >= 0) points[same] = point; else points.push(point);
}

function fact(name, value) {
  return [h("dt", {}, name), h("dd", {}, value)];
}

function renderJob() {
  const statusBox = document.getElementById("job-status");
  statusBox.replaceChildren(statusBadge(job.status));
  document.getElementById("cancel").disabled = FINISHED.has(job.status) || job.status === "cancelling";
  const student = job.student.model || (job.student.target ? `target ${JSON.stringify(job.student.target)}`
    : `${JSON.stringify(job.student.architecture)} (init ${job.student.init})`);
  const hp = job.hyperparameters;
  document.getElementById("job-facts").replaceChildren(...[
    fact("Task", job.task),
    fact("Teacher", job.teacher.model + (job.teacher.finetune ? " (fine-tuned first)" : "")),
    fact("Student", student),
    fact("Training file", job.training_file),
    fact("Validation file", job.validation_file || "none"),
    fact("Hyperparameters", `epochs ${hp.epochs}, batch ${hp.batch_size}, lr ${hp.learning_rate}, seed ${hp.seed}`),
    fact("Created", fmtTime(job.created_at)),
    fact("Finished", fmtTime(job.finished_at) || "—"),
    fact("Attempts", String(job.attempts ?? "")),
    fact("Result model", job.result_model ? modelLink(job.result_model) : "—"),
    ...Object.entries(job.metadata || {}).map(([k, v]) => fact(`metadata.${k}`, v)),
  ].flat());
  const error = document.getElementById("job-error");
  error.hidden = !job.error;
  error.textContent = job.error ? `${job.error.code}: ${job.error.message}` : "";
  renderStages();
}

function renderStages() {
  const stages = STAGES.filter((s) => s !== "finetune_teacher" || job.teacher.finetune);
  const current = stages.indexOf(job.progress.stage);
  const done = job.status === "succeeded";
  document.getElementById("stages").replaceChildren(...stages.map((stage, i) => {
    let percent = 0, note = "";
    if (done || i < current) {
      percent = 100;
      note = started.has(stage) || done ? "done" : "skipped";
    } else if (i === current) {
      percent = job.progress.percent || 0;
      note = `${percent.toFixed(0)}%`;
      if (stage === "distill" && job.progress.total_steps) note += ` · step ${job.progress.step}/${job.progress.total_steps}, epoch ${job.progress.epoch}`;
      if (job.progress.eta_seconds && !FINISHED.has(job.status)) note += ` · ETA ${Math.round(job.progress.eta_seconds)} s`;
    }
    return h("div", { class: "stage", "data-stage": stage },
      h("span", { class: "stage-name" }, STAGE_NAMES[stage] || stage),
      h("progress", { max: 100, value: percent }),
      h("span", { class: "stage-note" }, note));
  }));
}

function renderCharts() {
  const toSeries = (m) => [...m].map(([name, points]) => ({ name, points }));
  lineChart(document.getElementById("loss-chart"), toSeries(loss), { empty: "No training step reported yet." });
  lineChart(document.getElementById("eval-chart"), toSeries(evals), { empty: "No evaluation yet (one per epoch)." });
}

function onJobEvent(event) {
  const data = event.data || {};
  if (data.stage) started.add(data.stage);
  if (event.type === "metrics" && typeof data.step === "number") {
    const isEval = Object.keys(data).some((k) => k.startsWith("eval_"));
    for (const [key, value] of Object.entries(data)) {
      if (typeof value !== "number") continue;
      if (isEval && key.startsWith("eval_")) add(evals, key.slice(5), [data.step, value]);
      else if (!isEval && (key === "train_loss" || key === "finetune_loss" || key.startsWith("loss_"))) {
        add(loss, key, [data.step, value]);
      }
    }
  }
  const list = document.getElementById("events");
  list.prepend(h("li", { class: "ev ev-" + event.level, "data-event": event.id },
    h("time", {}, fmtTime(event.created_at)), " ", h("span", { class: "msg" }, event.message)));
}

async function refreshCheckpoints() {
  try {
    const page = await apiJson(`/v1/distillation/jobs/${encodeURIComponent(jobId)}/checkpoints`);
    document.querySelector("#checkpoints tbody").replaceChildren(...page.data.map((c) => h("tr", {},
      h("td", {}, c.id), h("td", {}, c.step), h("td", {}, c.epoch), h("td", {}, fmtNumber(c.train_loss)),
      h("td", {}, fmtTime(c.created_at)))));
    document.getElementById("checkpoints-empty").hidden = page.data.length > 0;
  } catch { /* a passing failure: the next update tries again */ }
}

let lastCheckpointRead = 0;
function maybeRefreshCheckpoints(force = false) {
  if (force || Date.now() - lastCheckpointRead > 5000) {
    lastCheckpointRead = Date.now();
    refreshCheckpoints();
  }
}

document.getElementById("cancel").addEventListener("click", async () => {
  if (!confirm(`Cancel job ${jobId}?`)) return;
  try {
    job = await apiJson(`/v1/distillation/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
    renderJob();
  } catch (err) {
    flash(errorText(err));
  }
});

const controller = new AbortController();
addEventListener("pagehide", () => controller.abort());
// Many events arrive at once on connect: draw the charts once per frame, not once per event.
let drawScheduled = false;
function scheduleCharts() {
  if (drawScheduled) return;
  drawScheduled = true;
  requestAnimationFrame(() => {
    drawScheduled = false;
    renderCharts();
  });
}

renderCharts();
try {
  await followJob(jobId, {
    signal: controller.signal,
    onState: (live) => { document.getElementById("live").hidden = !live; },
    onEvent: (event) => {
      if (event.event === "job.update") {
        job = event.data;
        renderJob();
        maybeRefreshCheckpoints();
      } else if (event.event === "job.event") {
        onJobEvent(event.data);
        scheduleCharts();
        if (event.data.data && event.data.data.stage && job) renderStages();
      } else if (event.event === "end") {
        maybeRefreshCheckpoints(true);
      }
    },
  });
} catch (err) {
  flash(err instanceof ApiError && err.status === 404 ? `No job ${jobId} (or not yours).` : errorText(err));
}
renderCharts();
