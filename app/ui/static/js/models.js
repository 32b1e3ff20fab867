import { apiJson, errorText, flash, fmtBytes, fmtNumber, fmtTime, h, initChrome, jobLink, modelLink, requireKey } from "./api.js";

requireKey();
initChrome("models");
try {
  const page = await apiJson("/v1/models");
  document.querySelector("#models tbody").replaceChildren(...page.data.map((m) => h("tr", {},
    h("td", {}, modelLink(m.id)),
    h("td", {}, m.source),
    h("td", {}, m.task),
    h("td", {}, fmtNumber(m.parameters)),
    h("td", {}, fmtBytes(m.size_bytes)),
    h("td", {}, m.source_job ? jobLink(m.source_job) : ""),
    h("td", {}, fmtTime(m.created_at)))));
} catch (err) {
  flash(errorText(err));
}
