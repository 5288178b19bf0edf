// Devices page: a device revoked or locked while the page is open is marked at once.
"use strict";
(function () {
  function start() {
    var live = document.getElementById("live");
    if (!window.EventSource) { return; }
    var source = new EventSource("/events");
    source.addEventListener("device", function (msg) {
      var d;
      try { d = JSON.parse(msg.data); } catch (e) { return; }
      var row = document.querySelector('tr[data-device-id="' + CSS.escape(d.device_id) + '"]');
      if (!row) { return; }
      var cell = row.querySelector(".status-cell");
      var badge = document.createElement("span");
      badge.className = "status status-" + (d.status === "revoked" ? "revoked" : "locked");
      badge.textContent = d.status;
      cell.textContent = "";
      cell.appendChild(badge);
      row.className = "row-" + (d.status === "revoked" ? "revoked" : "locked");
      live.hidden = false;
      live.className = "live alert";
      live.textContent = "a device was just " + d.status + "; reload for all details";
    });
  }
  document.addEventListener("DOMContentLoaded", start);
})();
