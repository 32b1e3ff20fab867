// Upload a data file, then start a job from the contract's fields (the body is shown as built).
import { apiJson, errorText, flash, h, initChrome, requireKey } from "./api.js";

requireKey();
initChrome("new");
const $ = (id) => document.getElementById(id);
const num = (id) => Number($(id).value);

async function loadFiles(select) {
  const page = await apiJson("/v1/files");
  $("files").querySelector("tbody").replaceChildren(...page.data.map((f) => h("tr", { "data-file": f.id },
    h("td", {}, f.id), h("td", {}, f.filename), h("td", {}, f.purpose), h("td", {}, f.num_records),
    h("td", {}, (f.columns || []).join(", ")))));
  const option = (f) => h("option", { value: f.id }, `${f.filename} (${f.id}, ${f.num_records} records)`);
  const keep = (id) => $(id).value;
  const [train, validation] = [keep("training-file"), keep("validation-file")];
  $("training-file").replaceChildren(...page.data.filter((f) => f.purpose === "train").map(option));
  $("validation-file").replaceChildren(h("option", { value: "" }, "none"),
    ...page.data.filter((f) => f.purpose === "validation").map(option));
  if (train) $("training-file").value = train;
  if (validation) $("validation-file").value = validation;
  if (select) $(select.purpose === "validation" ? "validation-file" : "training-file").value = select.id;
  preview();
}

async function loadModels() {
  const page = await apiJson("/v1/models");
  $("model-refs").replaceChildren(...page.data.map((m) => h("option", { value: m.id }, `${m.source}, ${m.task}`)));
}

function metadata() {
  const out = {};
  for (const line of $("metadata").value.split("\n")) {
    const at = line.indexOf("=");
    if (at > 0) out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return out;
}

function student() {
  const kind = $("student-kind").value;
  if (kind === "model") return { model: $("student-ref").value.trim() };
  if (kind === "target") return { target: { compression: num("compression") } };
  return {
    architecture: { num_layers: num("num-layers"), hidden_size: num("hidden-size"),
                    num_heads: num("num-heads"), intermediate_size: num("intermediate-size") },
    init: $("init").value,
  };
}

function body() {
  const teacher = { model: $("teacher").value.trim() };
  if ($("finetune").checked) teacher.finetune = { epochs: num("finetune-epochs") };
  const losses = [["kl", num("kl-weight")], ["ce", num("ce-weight")]]
    .filter(([, w]) => w > 0).map(([type, weight]) => ({ type, weight }));
  const request = {
    task: $("task").value,
    teacher,
    student: student(),
    training_file: $("training-file").value,
    validation_file: $("validation-file").value || null,
    data: { text_column: $("text-column").value, label_column: $("label-column").value,
            max_seq_length: num("max-seq-length") },
    distillation: { temperature: num("temperature"), losses },
    hyperparameters: { epochs: num("epochs"), batch_size: num("batch-size"),
                       learning_rate: num("learning-rate"), seed: num("seed") },
    metadata: metadata(),
  };
  return request;
}

function preview() {
  $("body-preview").textContent = JSON.stringify(body(), null, 2);
}

$("student-kind").addEventListener("change", () => {
  for (const kind of ["architecture", "model", "target"]) $(`student-${kind}`).hidden = $("student-kind").value !== kind;
  preview();
});
$("job-form").addEventListener("input", preview);

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = $("upload-file").files[0];
  const form = new FormData();
  form.append("purpose", $("upload-purpose").value);
  form.append("file", file, file.name);
  $("upload").disabled = true;
  try {
    const uploaded = await apiJson("/v1/files", { method: "POST", body: form });
    flash(`Uploaded ${uploaded.filename} as ${uploaded.id} (${uploaded.num_records} records).`, "ok");
    $("upload-form").reset();
    await loadFiles(uploaded);
  } catch (err) {
    flash(errorText(err));
  } finally {
    $("upload").disabled = false;
  }
});

$("job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("create").disabled = true;
  try {
    // The button stays disabled until the answer, so a double click makes one job.
    const job = await apiJson("/v1/distillation/jobs", { method: "POST", json: body() });
    flash("");
    location.assign("/ui/jobs/" + encodeURIComponent(job.id));
  } catch (err) {
    flash(errorText(err));
    $("create").disabled = false;
  }
});

// "Start job" stays disabled until the files and models are listed: clicked earlier, the empty
// training-file choice would stop the form without a word.
try {
  await Promise.all([loadFiles(), loadModels()]);
} catch (err) {
  flash(errorText(err));
} finally {
  $("create").disabled = false;
  $("create").removeAttribute("title");
}
