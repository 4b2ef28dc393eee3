// The live feed: follows /api/events/stream (Server-Sent Events). EventSource reconnects by itself and
// sends Last-Event-ID, so the stream resumes after the last event this page saw; an item for a flow
// already listed is replaced in place (update, retraction), a new flow goes on top.
(function () {
  "use strict";
  var feed = document.getElementById("feed");
  var tpl = document.getElementById("feed-item");
  var state = document.getElementById("feed-state");
  if (!feed || !tpl || !window.EventSource) return;
  var KIND = { classification: "new", update: "updated", retraction: "retracted" };
  var MAX = 200;

  function setState(text, cls) { state.textContent = text; state.className = "state small " + cls; }

  function usd(v) {
    if (v === null || v === undefined) return "\u2013";
    var a = Math.abs(v);
    if (a >= 1e9) return "$" + (v / 1e9).toFixed(2) + "B";
    if (a >= 1e6) return "$" + (v / 1e6).toFixed(1) + "M";
    return "$" + Math.round(v).toLocaleString("en-US");
  }

  function slot(el, name) { return el.querySelector('[data-slot="' + name + '"]'); }

  function render(ev) {
    var rec = ev.flow, c = rec && rec.classification;
    if (!c || c.verdict === "internal") return null;
    var retracted = ev.kind === "retraction" || c.status === "retracted";
    var li = tpl.content.firstElementChild.cloneNode(true);
    li.dataset.key = rec.chain + ":" + rec.txid + ":" + rec.entity;
    li.dataset.event = String(ev.id);
    li.dataset.entity = rec.entity;
    li.classList.toggle("retracted", retracted);
    var v = slot(li, "verdict");
    v.className = "chip " + (retracted ? "v-retracted" : "v-" + c.verdict);
    v.textContent = c.verdict + (retracted ? " (retracted)" : "");
    var a = slot(li, "entity");
    a.textContent = rec.entity;
    a.href = "/entity/" + encodeURIComponent(rec.entity);
    slot(li, "amount").textContent = rec.out_amount + " BTC";
    slot(li, "usd").textContent = usd(c.usd_value);
    var s = slot(li, "severity");
    s.textContent = c.severity;
    s.className = "sev sev-" + c.severity;
    slot(li, "kind").textContent = KIND[ev.kind] || ev.kind;
    slot(li, "at").textContent = rec.block_time || rec.seen_at || "";
    var t = slot(li, "txid");
    t.textContent = rec.txid.slice(0, 16) + "\u2026";
    t.title = rec.txid;
    slot(li, "status").textContent = rec.status;
    slot(li, "version").textContent = String(c.version);
    var ul = slot(li, "reasons");
    ul.textContent = "";
    (c.reasons || []).forEach(function (r) {
      var item = document.createElement("li");
      item.textContent = r;
      ul.appendChild(item);
    });
    return li;
  }

  function apply(ev) {
    feed.dataset.after = String(ev.id);
    var li = render(ev);
    if (!li) return;
    li.classList.add("fresh");
    var old = null;
    for (var i = 0; i < feed.children.length; i++) {
      if (feed.children[i].dataset.key === li.dataset.key) { old = feed.children[i]; break; }
    }
    if (old) {
      var open = old.querySelector("details");
      if (open && open.open) li.querySelector("details").open = true;
      feed.replaceChild(li, old);
    } else {
      feed.insertBefore(li, feed.firstChild);
      while (feed.children.length > MAX) feed.removeChild(feed.lastChild);
    }
  }

  var es = new EventSource("/api/events/stream?after=" + encodeURIComponent(feed.dataset.after || "0"));
  ["classification", "update", "retraction"].forEach(function (kind) {
    es.addEventListener(kind, function (e) { apply(JSON.parse(e.data)); });
  });
  es.onopen = function () { setState("live", "live"); };
  es.onerror = function () { setState("reconnecting\u2026", "down"); };
})();
