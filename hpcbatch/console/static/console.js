// hpcbatch console: live regions refreshed from server-sent events, a log follower,
// and expandable array/multi-node rows. No framework, no build step.
"use strict";

// Re-render every [data-live] element from a fresh copy of this page.
let refreshTimer = null;
function refreshLive() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(async () => {
    refreshTimer = null;
    const response = await fetch(location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const el of document.querySelectorAll("[data-live]")) {
      const fresh = page.getElementById(el.id);
      if (fresh && fresh.innerHTML !== el.innerHTML) el.innerHTML = fresh.innerHTML;
    }
    bindExpanders();
  }, 300);
}

function followStream() {
  const src = document.body.dataset.stream;
  if (!src || !window.EventSource) return;
  const after = document.body.dataset.after || "";
  const source = new EventSource(src + (src.includes("?") ? "&" : "?") + "after=" + after);
  source.addEventListener("change", () => { refreshLive(); wakeLog(); });
}

// Follow the latest attempt's log from the byte offset already shown.
let logState = null;
function wakeLog() { if (logState && logState.idle) { logState.idle = false; pollLog(); } }
async function pollLog() {
  const pre = document.getElementById("log");
  if (!pre) return;
  const s = logState;
  const url = `${pre.dataset.logSrc}?startFromOffset=${s.offset}` + (s.attempt === null ? "" : `&attempt=${s.attempt}`);
  let doc;
  try {
    const response = await fetch(url, { credentials: "same-origin" });
    doc = await response.json();
    if (!response.ok) { document.getElementById("log-state").textContent = doc.error || "cannot read the log"; return; }
  } catch (e) { setTimeout(pollLog, 2000); return; }
  if (doc.attempt !== undefined && s.attempt !== null && doc.attempt !== s.attempt) {
    s.attempt = doc.attempt; s.offset = 0; pre.textContent = ""; return pollLog();
  }
  if (doc.attempt !== undefined) s.attempt = doc.attempt;
  if (doc.data) { pre.textContent += doc.data; pre.scrollTop = pre.scrollHeight; }
  s.offset = doc.nextOffset || s.offset;
  const state = document.getElementById("log-state");
  const status = document.querySelector("#job-status .badge");
  const final = status && /SUCCEEDED|FAILED/.test(status.textContent);
  if (doc.complete && final) { state.textContent = "End of log."; s.idle = true; return; }
  state.textContent = doc.attempt === undefined ? "No output yet: the job has not started." : (doc.complete ? "" : "Following…");
  setTimeout(pollLog, doc.data ? 300 : 1000);
}

function bindExpanders() {
  for (const button of document.querySelectorAll("button.expand:not([data-bound])")) {
    button.dataset.bound = "1";
    button.addEventListener("click", async () => {
      const row = button.closest("tr");
      const open = button.textContent === "▾";
      let next = row.nextElementSibling;
      while (next && next.classList.contains("child")) { const gone = next; next = next.nextElementSibling; gone.remove(); }
      if (open) { button.textContent = "▸"; return; }
      const response = await fetch(button.dataset.children, { credentials: "same-origin" });
      row.insertAdjacentHTML("afterend", await response.text());
      button.textContent = "▾";
    });
  }
}

document.addEventListener("DOMContentLoaded", () => {
  followStream();
  bindExpanders();
  if (document.getElementById("log")) { logState = { offset: 0, attempt: null, idle: false }; pollLog(); }
});
