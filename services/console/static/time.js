// Times as local time plus "3 min ago"; the page holds UTC (correct without script).
"use strict";
(function () {
  function ago(seconds) {
    var s = Math.round(seconds);
    if (s < -60) { return "in the future (clocks differ)"; }
    if (s < 45) { return "just now"; }
    var m = Math.round(s / 60);
    if (m < 60) { return m + " min ago"; }
    var h = Math.round(s / 3600);
    if (h < 48) { return h + " h ago"; }
    return Math.round(s / 86400) + " days ago";
  }
  function render(el) {
    var ts = parseFloat(el.getAttribute("data-ts"));
    if (!isFinite(ts)) { return; }
    var d = new Date(ts * 1000);
    el.textContent = d.toLocaleString() + " (" + ago(Date.now() / 1000 - ts) + ")";
    el.title = el.getAttribute("datetime") || "";
  }
  function all() {
    var els = document.querySelectorAll("time[data-ts]");
    for (var i = 0; i < els.length; i++) { render(els[i]); }
  }
  window.attestgateTime = { render: render, all: all };
  document.addEventListener("DOMContentLoaded", all);
  setInterval(all, 30000);
})();
