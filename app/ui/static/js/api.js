// The dashboard's shared pieces: the API key, calls to /v1 with it, a DOM builder that only ever
// makes text nodes of data, formatting, and a server-sent-events reader on fetch() (EventSource
// cannot send an Authorization header).

const KEY = "distill.apiKey";

export function getKey() {
  return sessionStorage.getItem(KEY) || localStorage.getItem(KEY);
}

export function setKey(key, remember) {
  clearKey();
  (remember ? localStorage : sessionStorage).setItem(KEY, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
}

/** The key, or off to the sign-in page (coming back here afterwards). */
export function requireKey() {
  const key = getKey();
  if (!key) {
    location.replace("/ui/login?next=" + encodeURIComponent(location.pathname + location.search));
    throw new Error("not signed in");
  }
  return key;
}

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
  }
}

/** fetch() on the API with the key; an error answer is thrown as an ApiError. */
export async function api(path, { method = "GET", json, body, headers = {}, signal, signIn = true } = {}) {
  const all = { Authorization: "Bearer " + getKey(), ...headers };
  if (json !== undefined) {
    all["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  const response = await fetch(path, { method, headers: all, body, signal, cache: "no-store" });
  if (!response.ok) {
    let error = {};
    try { error = (await response.json()).error || {}; } catch { /* not JSON */ }
    if (response.status === 401 && signIn) {
      clearKey();
      requireKey();
    }
    throw new ApiError(response.status, error);
  }
  return response;
}

export async function apiJson(path, options) {
  return (await api(path, options)).json();
}

/** An element; attributes as given, children as text unless they already are nodes. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function flash(message, kind = "error") {
  const box = document.getElementById("flash");
  box.textContent = message;
  box.className = "flash " + kind;
  box.hidden = !message;
}

export function errorText(err) {
  if (err instanceof ApiError) return err.param ? `${err.message} (field: ${err.param})` : err.message;
  return String(err && err.message ? err.message : err);
}

export const jobLink = (id) => h("a", { href: "/ui/jobs/" + encodeURIComponent(id) }, id);
export const modelLink = (id) => h("a", { href: "/ui/models/" + encodeURIComponent(id) }, id);
export const statusBadge = (status) => h("span", { class: "status s-" + status }, status);

export function fmtTime(unix) {
  return unix ? new Date(unix * 1000).toLocaleString() : "";
}

export function fmtNumber(x) {
  if (typeof x !== "number") return x === null || x === undefined ? "" : String(x);
  if (Number.isInteger(x)) return x.toLocaleString();
  return Math.abs(x) >= 100 ? x.toFixed(1) : x.toPrecision(4);
}

export function fmtBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** One SSE block ("event: …\nid: …\ndata: …") as {event, id, data}; null for a comment. */
export function parseSseBlock(block) {
  const event = { event: "message", id: null, data: [] };
  let seen = false;
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (name === "data") event.data.push(value);
    else if (name === "event") event.event = value;
    else if (name === "id") event.id = value;
    else continue;
    seen = true;
  }
  if (!seen) return null;
  event.data = event.data.join("\n");
  return event;
}

/**
 * Follow a job's live events: calls onEvent({event, id, data (parsed)}) until `end` (resolves)
 * or `signal` aborts. A dropped connection is resumed from the last event id after a pause.
 */
export async function followJob(jobId, { onEvent, onState = () => {}, signal }) {
  const path = `/v1/distillation/jobs/${encodeURIComponent(jobId)}/events?stream=true`;
  let lastId = null;
  while (!signal.aborted) {
    try {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await api(path, { headers, signal });
      onState(true);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        // CRLF or CR line ends become LF, but a trailing CR may be half of a CRLF: keep it.
        const tail = buffer.endsWith("\r") ? "\r" : "";
        buffer = buffer.slice(0, buffer.length - tail.length).replace(/\r\n?/g, "\n") + tail;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const parsed = parseSseBlock(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!parsed) continue;
          if (parsed.id) lastId = parsed.id;
          parsed.data = parsed.data ? JSON.parse(parsed.data) : null;
          onEvent(parsed);
          if (parsed.event === "end") {
            onState(false);
            return;
          }
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      if (err instanceof ApiError && err.status < 500) throw err;
    }
    onState(false);
    await sleep(2000);
  }
}

/** Common to every page: the nav's current item, the signed-in hint and the sign-out button. */
export function initChrome(current) {
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === current) link.classList.add("current");
  }
  const key = getKey();
  const out = document.getElementById("sign-out");
  if (key) {
    document.getElementById("who").textContent = "key …" + key.slice(-4);
    out.hidden = false;
    out.addEventListener("click", () => {
      clearKey();
      location.assign("/ui/login");
    });
  }
}
