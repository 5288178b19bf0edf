// Live board: new posts from /events (server-sent events) go on top. Text only: every
// value is set with textContent, never parsed as HTML.
"use strict";
(function () {
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function postElement(p) {
    var art = el("article", "post");
    art.setAttribute("data-post-id", p.post_id);
    var meta = el("div", "meta");
    meta.appendChild(el("span", "author", p.author || "(device not in the registry)"));
    meta.appendChild(document.createTextNode(" "));
    var a = el("a", "device", String(p.device_id).slice(0, 12));
    a.href = "/devices/" + encodeURIComponent(p.device_id);
    meta.appendChild(a);
    meta.appendChild(document.createTextNode(" "));
    var t = el("time");
    t.setAttribute("data-ts", String(p.ts));
    t.setAttribute("datetime", new Date(p.ts * 1000).toISOString());
    meta.appendChild(t);
    meta.appendChild(document.createTextNode(" "));
    meta.appendChild(el("span", "sig " + (p.verified ? "verified" : "unverified"),
      p.verified ? "verified TPM signature" : "signature NOT verified"));
    art.appendChild(meta);
    art.appendChild(el("pre", "text", p.text));
    if (window.attestgateTime) { window.attestgateTime.render(t); }
    return art;
  }
  function start() {
    var list = document.getElementById("posts");
    var live = document.getElementById("live");
    if (!list || !window.EventSource) { return; }
    var source = new EventSource("/events");
    source.addEventListener("open", function () {
      live.textContent = "live: new posts appear at the top";
      live.className = "live on";
    });
    source.addEventListener("error", function () {
      live.textContent = "live updates interrupted; reconnecting…";
      live.className = "live off";
    });
    source.addEventListener("post", function (msg) {
      var p;
      try { p = JSON.parse(msg.data); } catch (e) { return; }
      if (document.querySelector('article[data-post-id="' + CSS.escape(p.post_id) + '"]')) {
        return;
      }
      var empty = document.getElementById("empty");
      if (empty) { empty.remove(); }
      var art = postElement(p);
      art.classList.add("fresh");
      list.insertBefore(art, list.firstChild);
    });
  }
  document.addEventListener("DOMContentLoaded", start);
})();
