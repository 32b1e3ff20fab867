import { apiJson, errorText, flash, fmtTime, h, initChrome, jobLink, requireKey, sleep, statusBadge } from "./api.js";

requireKey();
initChrome("jobs");
const ACTIVE = new Set(["queued", "running", "cancelling"]);

function metadataText(metadata) {
  return Object.entries(metadata || {}).map(([k, v]) => `${k}=${v}`).join(", ");
}

function row(job) {
  const p = job.progress || {};
  return h("tr", { "data-job": job.id },
    h("td", {}, jobLink(job.id)),
    h("td", {}, statusBadge(job.status)),
    h("td", {}, job.task),
    h("td", {}, ACTIVE.has(job.status) || job.status === "failed" ? p.stage || "" : ""),
    h("td", {}, h("progress", { max: 100, value: job.status === "succeeded" ? 100 : p.percent || 0 }),
      ` ${Math.round(job.status === "succeeded" ? 100 : p.percent || 0)}%`),
    h("td", {}, fmtTime(job.created_at)),
    h("td", { class: "meta" }, metadataText(job.metadata)));
}

async function refresh() {
  const page = await apiJson("/v1/distillation/jobs?limit=100");
  document.querySelector("#jobs tbody").replaceChildren(...page.data.map(row));
  document.getElementById("jobs-empty").hidden = page.data.length > 0;
  return page.data.some((job) => ACTIVE.has(job.status));
}

// Poll while anything is still moving; a list needs no stream of its own.
for (;;) {
  let moving = true;
  try {
    moving = await refresh();
    flash("");
  } catch (err) {
    flash(errorText(err));
  }
  await sleep(moving ? 2000 : 10000);
}
