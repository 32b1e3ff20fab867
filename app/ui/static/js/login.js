import { ApiError, apiJson, clearKey, errorText, flash, initChrome, setKey } from "./api.js";

initChrome("");
const form = document.getElementById("login-form");
form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = document.getElementById("api-key").value.trim();
  setKey(key, document.getElementById("remember").checked);
  try {
    // Any /v1 call checks the key; the cheapest is a one-job page.
    await apiJson("/v1/distillation/jobs?limit=1", { signIn: false });
  } catch (err) {
    clearKey();
    flash(err instanceof ApiError && err.status === 401 ? "That key was not accepted." : errorText(err));
    return;
  }
  const next = new URLSearchParams(location.search).get("next") || "";
  // Only a path on this dashboard: never an address elsewhere.
  location.assign(next.startsWith("/ui") && !next.startsWith("/ui/login") ? next : "/ui");
});
