/* fstore web UI, start: the API key field (kept in sessionStorage for this
   tab only, sent as the API's Authorization header), then the first page. */
"use strict";

(() => {
  const fs = window.fstore;
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  input.value = fs.key();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const key = input.value.trim();
    if (key) sessionStorage.setItem(fs.KEY_STORE, key);
    else sessionStorage.removeItem(fs.KEY_STORE);
    await fs.refreshScopes();
    fs.route();
  });
  window.addEventListener("hashchange", () => {
    fs.route().then(() => document.getElementById("main").focus({ preventScroll: true }));
  });
  fs.refreshScopes().then(fs.route);
})();
