// Audit filter: the CSP forbids form submission (form-action 'none'), so the two fields
// navigate by script to /audit?device=...&event=...
"use strict";
(function () {
  function apply() {
    var q = new URLSearchParams();
    var dev = document.getElementById("f-device").value.trim();
    var ev = document.getElementById("f-event").value.trim();
    if (dev) { q.set("device", dev); }
    if (ev) { q.set("event", ev); }
    var s = q.toString();
    window.location.href = "/audit" + (s ? "?" + s : "");
  }
  function start() {
    var button = document.getElementById("f-apply");
    if (!button) { return; }
    button.addEventListener("click", apply);
    ["f-device", "f-event"].forEach(function (id) {
      document.getElementById(id).addEventListener("keydown", function (e) {
        if (e.key === "Enter") { apply(); }
      });
    });
  }
  document.addEventListener("DOMContentLoaded", start);
})();
