// The model page: facts, the teacher-vs-student report, the model card, download and predict.
import {
  ApiError, api, apiJson, errorText, flash, fmtBytes, fmtNumber, fmtTime, h, initChrome, jobLink,
  requireKey,
} from "./api.js";

requireKey();
initChrome("models");
const modelId = document.getElementById("main").dataset.modelId;
const base = `/v1/models/${encodeURIComponent(modelId)}`;

function fact(name, value) {
  return [h("dt", {}, name), h("dd", {}, value)];
}

const isScalar = (v) => typeof v === "number" || typeof v === "string" || typeof v === "boolean";

function renderReport(report) {
  const empty = document.getElementById("report-empty");
  if (!report) {
    empty.hidden = false;
    document.getElementById("report").hidden = true;
    return;
  }
  const teacher = report.teacher || {}, student = report.student || {};
  const names = [...new Set([...Object.keys(teacher), ...Object.keys(student)])]
    .filter((k) => isScalar(teacher[k]) || isScalar(student[k]));
  // The headline metric first, as the model card has it.
  names.sort((a, b) => (b === report.metric) - (a === report.metric));
  const cell = (name, v) => (name === "size_bytes" && typeof v === "number" ? fmtBytes(v) : fmtNumber(v));
  document.querySelector("#report tbody").replaceChildren(...names.map((name) => h("tr", { "data-metric": name },
    h("th", {}, name.replaceAll("_", " ")), h("td", {}, cell(name, teacher[name])), h("td", {}, cell(name, student[name])))));
  const summary = Object.entries(report)
    .filter(([k, v]) => typeof v === "number" && k !== "optimizer_steps")
    .map(([k, v]) => `${k.replaceAll("_", " ")}: ${fmtNumber(v)}`);
  document.getElementById("report-summary").textContent = summary.join(" · ");
}

async function load() {
  const model = await apiJson(base);
  document.getElementById("model-facts").replaceChildren(...[
    fact("Task", model.task),
    fact("Source", model.source),
    fact("Owned by", model.owned_by),
    fact("Parameters", fmtNumber(model.parameters)),
    fact("Size", fmtBytes(model.size_bytes)),
    fact("Labels", (model.labels || []).join(", ") || "—"),
    fact("From job", model.source_job ? jobLink(model.source_job) : "—"),
    fact("Created", fmtTime(model.created_at)),
  ].flat());
  renderReport(model.report);
  const card = await apiJson(`/ui/api/models/${encodeURIComponent(modelId)}/card`);
  const article = document.getElementById("card");
  if (card.html) {
    // Rendered by the server with raw HTML escaped (markdown-it, html off): safe to insert.
    article.innerHTML = card.html;
    // Its images are files of the model (the training curve): fetched with the key, shown as blobs.
    for (const img of article.querySelectorAll("img")) {
      const name = img.getAttribute("src") || "";
      img.removeAttribute("src");
      if (/^[\w.-]+$/.test(name)) {
        api(`/ui/api/models/${encodeURIComponent(modelId)}/files/${encodeURIComponent(name)}`)
          .then((r) => r.blob()).then((blob) => { img.src = URL.createObjectURL(blob); })
          .catch(() => { img.alt = `(${img.alt || name}: not available)`; });
      }
    }
  } else {
    article.textContent = "This model has no model card.";
  }
}

document.getElementById("download").addEventListener("click", async (event) => {
  const button = event.currentTarget;
  button.disabled = true;
  button.textContent = "Downloading…";
  try {
    const format = document.getElementById("download-format").value;
    const blob = await (await api(`${base}/download?format=${encodeURIComponent(format)}`)).blob();
    const url = URL.createObjectURL(blob);
    const link = h("a", { href: url, download: `${modelId}-${format}.tar.gz` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    flash(errorText(err));
  } finally {
    button.disabled = false;
    button.textContent = "Download (.tar.gz)";
  }
});

document.getElementById("predict-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const inputs = document.getElementById("predict-inputs").value.split("\n").map((s) => s.trim()).filter(Boolean);
  const button = document.getElementById("predict");
  button.disabled = true;
  try {
    const result = await apiJson(`${base}/predict`, { method: "POST", json: { inputs } });
    const table = document.getElementById("predictions");
    table.hidden = false;
    table.querySelector("tbody").replaceChildren(...result.data.map((out, i) => h("tr", {},
      h("td", {}, inputs[i]),
      h("td", { class: "prediction" }, out.label ?? out.text ?? ""),
      h("td", {}, out.score === undefined ? "" : out.score.toFixed(3)))));
    flash("");
  } catch (err) {
    flash(errorText(err));
  } finally {
    button.disabled = false;
  }
});

try {
  await load();
} catch (err) {
  flash(err instanceof ApiError && err.status === 404 ? `No model ${modelId} (or not yours).` : errorText(err));
}
