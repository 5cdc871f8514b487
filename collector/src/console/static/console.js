// Opsplane console: the only script (the CSP forbids inline script).
// 1. Live regions: an element with data-live="URL" is refreshed from URL
//    every two seconds (server-rendered HTML), unless the user is typing in it.
// 2. <input type=file data-load-into=ID> loads the chosen file into textarea ID.
"use strict";

const LIVE_INTERVAL_MS = 2000;

function refresh(el) {
  const active = document.activeElement;
  if (active && el.contains(active) && active.matches("input, textarea, select")) return;
  if (el.querySelector("details[open]")) return;
  fetch(el.dataset.live, { headers: { "x-console-live": "1" }, credentials: "same-origin" })
    .then((r) => {
      if (r.status === 401) { window.location.reload(); return null; }
      return r.ok ? r.text() : null;
    })
    .then((html) => {
      if (html !== null && html !== undefined && el.innerHTML !== html) el.innerHTML = html;
    })
    .catch(() => {});
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live]").forEach((el) => {
    setInterval(() => { if (!document.hidden) refresh(el); }, LIVE_INTERVAL_MS);
  });
  document.querySelectorAll("input[type=file][data-load-into]").forEach((input) => {
    input.addEventListener("change", () => {
      const target = document.getElementById(input.dataset.loadInto);
      const file = input.files && input.files[0];
      if (!target || !file) return;
      file.text().then((text) => { target.value = text; });
    });
  });
});
