// RedGrid console: the little JavaScript it has. Live audience preview, live broadcast
// progress, confirmations. Only same-origin fetches.
"use strict";

function $(id) { return document.getElementById(id); }

function previewAudience(form) {
  const params = new URLSearchParams();
  for (const [k, v] of new FormData(form)) {
    if (k !== "csrf" && k !== "text" && typeof v === "string") params.append(k, v);
  }
  fetch(form.dataset.preview + "?" + params.toString(), { credentials: "same-origin" })
    .then((r) => r.json())
    .then((d) => {
      $("pv-total").textContent = d.total;
      $("pv-now").textContent = d.reachable_now;
      $("pv-deferred").textContent = d.deferred;
    })
    .catch(() => { $("pv-total").textContent = "?"; });
}

function setBar(bar, pct) {
  bar.className = "fill fill-" + Math.min(100, Math.floor(pct / 10) * 10);
}

function pollProgress(box) {
  const labels = { sending: "发送中", done: "已完成", cancelled: "已取消", draft: "草稿" };
  const tick = () => {
    fetch(box.dataset.url, { credentials: "same-origin" })
      .then((r) => r.json())
      .then((d) => {
        for (const k of ["targeted", "sent", "deferred", "failed", "pending"]) $("cp-" + k).textContent = d[k];
        $("cp-status").textContent = labels[d.status] || d.status;
        setBar($("cp-bar"), d.pct);
        if (d.finished) {
          const c = $("cp-cancel");
          if (c) c.closest("form").remove();
        } else {
          setTimeout(tick, 1000);
        }
      })
      .catch(() => setTimeout(tick, 3000));
  };
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  const composer = $("composer");
  if (composer) {
    composer.addEventListener("change", () => previewAudience(composer));
    previewAudience(composer);
  }
  const box = $("progress");
  if (box) {
    setBar($("cp-bar"), Number($("cp-bar").dataset.pct || 0));
    if (box.dataset.finished !== "true") pollProgress(box);
  }
  for (const f of document.querySelectorAll("form[data-confirm]")) {
    f.addEventListener("submit", (e) => { if (!window.confirm(f.dataset.confirm)) e.preventDefault(); });
  }
});
