/* dockd status pages: polls the JSON API and renders with DOM calls (no innerHTML of data).
   Text comes from the page's i18n catalogue (conf.t); the API carries codes only. */
(function () {
  "use strict";
  var conf = JSON.parse(document.getElementById("dockd-config").textContent);
  var T = conf.t;
  var lang = conf.lang;

  function t(key, vals) {
    var s = Object.prototype.hasOwnProperty.call(T, key) ? T[key] : key;
    if (vals) {
      s = s.replace(/\{(\w+)\}/g, function (m, k) {
        return Object.prototype.hasOwnProperty.call(vals, k) && vals[k] !== null &&
          vals[k] !== undefined ? String(vals[k]) : m;
      });
    }
    return s;
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined && text !== null) { e.textContent = String(text); }
    return e;
  }
  function bytes(n) {
    if (n === null || n === undefined) { return "–"; }
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
  }
  function dur(s) {
    if (s === null || s === undefined) { return "–"; }
    var sign = s < 0 ? "-" : "", a = Math.floor(Math.abs(s));
    var h = Math.floor(a / 3600), m = Math.floor((a % 3600) / 60), sec = a % 60;
    return sign + (h ? h + "h" + String(m).padStart(2, "0") + "m"
                     : m + "m" + String(sec).padStart(2, "0") + "s");
  }
  /* every time shown in the dock's time zone (conf.tz), with the zone named; the API
     carries UTC ISO times */
  var LOCALE = lang === "zh" ? "zh-CN" : "en-GB";
  function fmt(opts) {
    var o = Object.assign({ hour12: false }, opts);
    try { return new Intl.DateTimeFormat(LOCALE, Object.assign({ timeZone: conf.tz }, o)); }
    catch (e) { return new Intl.DateTimeFormat(LOCALE, o); }  // unknown zone: the browser's
  }
  var WHEN = fmt({ year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit",
                   minute: "2-digit", timeZoneName: "short" });
  var CLOCK = fmt({ hour: "2-digit", minute: "2-digit", second: "2-digit",
                    timeZoneName: "short" });
  function when(iso) {
    if (!iso) { return "–"; }
    var d = new Date(iso);
    return isNaN(d) ? iso : WHEN.format(d);
  }
  function withLang(path, l) {
    var q = new URLSearchParams(window.location.search);
    q.set("lang", l);
    return path + "?" + q.toString();
  }
  function getJSON(path) {
    return fetch(path, { cache: "no-store", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok) { throw new Error(path + ": HTTP " + r.status); }
        return r.json();
      });
  }
  function table(head, rows) {
    var tb = el("table"), thead = el("thead"), tr = el("tr");
    head.forEach(function (h) { tr.appendChild(el("th", null, t(h))); });
    thead.appendChild(tr);
    tb.appendChild(thead);
    var body = el("tbody");
    rows.forEach(function (r) { body.appendChild(r); });
    tb.appendChild(body);
    return tb;
  }
  function row(cells, cls) {
    var tr = el("tr", cls || null);
    cells.forEach(function (c) {
      if (c instanceof Node) { var td = el("td"); td.appendChild(c); tr.appendChild(td); }
      else { tr.appendChild(el("td", null, c)); }
    });
    return tr;
  }

  /* ------------------------------------------------------------------ header */
  function header() {
    document.getElementById("dock").textContent = t("dock", { dock: conf.dock_name || conf.dock });
    var nav = document.getElementById("nav");
    [["kiosk", "/"], ["fleet", "/fleet"], ["it", "/it"]].forEach(function (v) {
      var a = el("a", v[0] === conf.view ? "current" : null, t("nav." + v[0]));
      a.href = withLang(v[1], lang);
      nav.appendChild(a);
    });
    var sw = document.getElementById("lang");
    sw.textContent = t("lang.switch");
    sw.href = withLang(window.location.pathname, t("lang.other"));
    var clock = document.getElementById("clock");
    clock.title = t("time_zone", { zone: conf.tz });
    function tick() { clock.textContent = CLOCK.format(new Date()); }
    tick();
    setInterval(tick, 1000);
  }

  /* ------------------------------------------------------------------ kiosk */
  function bigText(p) {
    if (p.display === "copying") { return t("display.copying", { percent: p.percent || 0 }); }
    // a finding for the supervisor never hides that the recorder may be unplugged: said once
    if (p.display === "done" && p.attention) { return t("display.done_attention"); }
    return t("display." + p.display);
  }
  function problemText(pr) {
    var detail = pr.detail || "";
    if (pr.code === "port_error") { detail = t("port_error." + (pr.reason || "other")); }
    // findings are described by the daemon in English: the Chinese tile counts them, the
    // report (and the tile's tooltip) has the words
    if (pr.code === "finding_error" && lang !== "en") { detail = ""; }
    return t("problem." + pr.code, { detail: detail }) + (pr.count > 1 ? " ×" + pr.count : "");
  }
  function tile(p) {
    var d = el("section", "tile d-" + p.display + (p.attention ? " attention" : ""));
    d.dataset.port = p.port;
    d.dataset.display = p.display;
    d.dataset.attention = p.attention ? "1" : "0";
    var head = el("div", "head");
    head.appendChild(el("span", "port", t("port", { port: p.port.replace(/^port-/, "") })));
    head.appendChild(el("span", "serial", p.serial || ""));
    d.appendChild(head);
    var off = el("div", "officer", p.officer_name || (p.serial ? t("unknown") : "–"));
    if (p.officer_no) { off.appendChild(el("span", "no", p.officer_no)); }
    d.appendChild(off);
    d.appendChild(el("div", "big", bigText(p)));
    if (p.display === "copying") {
      var bar = el("progress");
      bar.max = 100;
      bar.value = p.percent || 0;
      d.appendChild(bar);
      var bits = [t("clips", { done: p.clips_done, total: p.clips_total })];
      if (p.eta_s !== null && p.eta_s !== undefined) { bits.push(t("eta", { eta: dur(p.eta_s) })); }
      d.appendChild(el("div", "meta", bits.join(" · ")));
    }
    (p.problems || []).forEach(function (pr) {
      var line = el("div", "problem p-" + pr.code, problemText(pr));
      if (pr.detail) { line.title = pr.detail; }
      d.appendChild(line);
    });
    if (p.attention && p.display !== "done") { d.appendChild(el("div", "meta", t("attention"))); }
    if (p.delivered && p.display !== "empty" && p.display !== "copying") {
      var dv = p.delivered, pending = dv.done < dv.total && p.display === "done";
      d.appendChild(el("div", "meta delivered", t(pending ? "delivered.pending" : "delivered", dv)));
    }
    if (p.serial) {
      var meta = el("div", "meta health");
      if (p.battery_percent !== null && p.battery_percent !== undefined) {
        meta.appendChild(el("span", p.fit === false ? "battery-low" : null,
                            t("battery", { value: Math.round(p.battery_percent) })));
      }
      if (p.storage_total) {
        meta.appendChild(document.createTextNode(" · "));
        meta.appendChild(el("span", null, t("storage", { free: bytes(p.storage_free),
                                                        total: bytes(p.storage_total) })));
      }
      d.appendChild(meta);
    }
    return d;
  }
  /* the grid that gives the largest text with every tile on screen: for c columns and
     r = ceil(n / c) rows, the font is bounded by the tile's height (~11 lines) and width
     (~17 characters); ties keep fewer columns */
  function fitTiles(grid, n) {
    var W = grid.clientWidth, H = grid.clientHeight;
    if (!n || !W || !H) { return; }
    var best = null;
    for (var c = 1; c <= n; c += 1) {
      var r = Math.ceil(n / c);
      var font = Math.min(H / r / 11, W / c / 17);
      if (!best || font > best.font + 0.01) { best = { c: c, r: r, font: font }; }
    }
    var f = Math.max(6, Math.min(20, best.font));
    var gap = Math.max(3, Math.round(f * 0.5));
    var rowH = Math.floor((H - gap * (best.r - 1)) / best.r);
    rowH = Math.min(rowH, Math.round(f * 13));
    grid.style.gap = gap + "px";
    grid.style.gridTemplateColumns = "repeat(" + best.c + ", minmax(0, 1fr))";
    grid.style.gridTemplateRows = "repeat(" + best.r + ", " + rowH + "px)";
    grid.style.fontSize = f.toFixed(1) + "px";
    grid.classList.toggle("compact", f < 12);
    grid.dataset.cols = String(best.c);
  }
  var lastPorts = null;
  function kiosk(main) {
    return getJSON("/api/ports").then(function (data) {
      var grid = el("div", "tiles");
      data.ports.forEach(function (p) { grid.appendChild(tile(p)); });
      main.replaceChildren(grid);
      lastPorts = data.ports.length;
      fitTiles(grid, lastPorts);
    });
  }
  window.addEventListener("resize", function () {
    var grid = document.querySelector("#main .tiles");
    if (grid && lastPorts) { fitTiles(grid, lastPorts); }
  });

  /* ------------------------------------------------------------------ fleet */
  function reasonText(r) { return t("reason." + r.code, { value: r.value || "" }); }
  function noteText(n) {
    return t("note." + n.code, { what: t("check." + n.check), value: n.value || "" });
  }
  function fleet(main) {
    return getJSON("/api/recorders").then(function (data) {
      var th = data.thresholds;
      var parts = [el("h2", null, t("fleet.heading")),
                   el("p", "hint", t("fleet.thresholds", { battery: th.min_battery_percent,
                     free: th.min_free_percent, clock: th.max_clock_offset_s }))];
      var rows = data.recorders.map(function (r) {
        var status = t({ unfit: "fleet.unfit", fit: "fleet.fit", charging: "fleet.charging",
                         "fit?": "fleet.maybe" }[r.label] || "fleet.unknown");
        var st = el("span", null, status);
        var tr = row([st, r.serial, [r.officer_no, r.officer_name].filter(Boolean).join(" "),
          r.unit_name || "–",
          r.battery_percent === null ? "–" : Math.round(r.battery_percent) + " %",
          r.storage_free_percent === null ? "–"
            : bytes(r.storage_free) + " (" + r.storage_free_percent + " %)",
          r.clock_offset_s === null ? "–" : (r.clock_offset_s >= 0 ? "+" : "") +
            r.clock_offset_s.toFixed(1) + " s",
          r.firmware || "–", when(r.last_seen),
          ((r.reasons || []).length ? r.reasons.map(reasonText)
                                    : (r.note_codes || []).map(noteText))
            .concat((r.incomplete_dockings || []).length ? [t("fleet.incomplete")] : [])
            .join("; ")],
          r.fit === false ? "unfit" : "");
        tr.firstChild.className = "status" + (r.fit ? " fit" : "");
        tr.dataset.serial = r.serial;
        return tr;
      });
      parts.push(table(["col.status", "col.recorder", "col.officer", "col.unit",
                        "col.battery", "col.storage", "col.clock", "col.firmware",
                        "col.last_seen", "col.reasons"], rows));
      if ((data.cases || []).length) {
        parts.push(el("h2", null, t("fleet.cases")));
        parts.push(table(["col.docking", "col.recorder", "col.officer", "col.case_no",
                          "col.party", "col.handler", "col.note"],
          data.cases.map(function (c) {
            return row([String(c.docking_id), c.serial,
              [c.officer_no, c.officer_name].filter(Boolean).join(" "), c.case_no || "–",
              c.party || "–", c.handler || "–", c.note || "–"], "");
          })));
      }
      main.replaceChildren.apply(main, parts);
    });
  }

  /* ------------------------------------------------------------------ IT */
  function levelSpan(level) { return el("span", "level-" + level, t("level." + level)); }
  function deadlineReason(rc) {
    var v = Object.assign({}, rc);
    if (v.deadline) { v.deadline = when(v.deadline); }
    if (v.eta) { v.eta = when(v.eta); }
    return t("dreason." + rc.code, v);
  }
  function alertText(a, q) {
    // deadline alerts: the docking's reasons, translated; others: the daemon's detail
    var m = /^docking\/(\d+)$/.exec(a.subject || "");
    if (a.kind === "deadline" && m) {
      var d = q.dockings.filter(function (x) { return String(x.docking_id) === m[1]; })[0];
      if (d && (d.reason_codes || []).length) {
        return d.reason_codes.map(deadlineReason).join("; ");
      }
    }
    return a.message ? t("detail", { detail: a.message }) : "";
  }
  function it(main) {
    return getJSON("/api/queue").then(function (q) {
      var parts = [];
      var cards = el("div", "cards");
      var lv = el("div", "card");
      lv.appendChild(document.createTextNode(t("it.level", { level: "" })));
      lv.appendChild(levelSpan(q.level));
      cards.appendChild(lv);
      cards.appendChild(el("div", "card", t("it.backlog", { clips: q.backlog.clips,
                                                             bytes: bytes(q.backlog.bytes) })));
      var dk = q.disk;
      var disk = el("div", "card" + (dk.low ? " bad" : ""),
                    t("it.disk", { free: bytes(dk.free), total: bytes(dk.total),
                                   percent: dk.free_percent === null ? "–" : dk.free_percent }) +
                    (dk.low ? " " + t("it.disk_low") : ""));
      cards.appendChild(disk);
      var states = Object.keys(q.clips_by_state).map(function (k) {
        return t("clipstate." + k) + " " + q.clips_by_state[k];
      }).join(lang === "zh" ? "，" : ", ");
      cards.appendChild(el("div", "card", t("it.clips_by_state", { states: states || "–" })));
      parts.push(cards);

      parts.push(el("h2", null, t("it.deadlines")));
      if (!q.dockings.length) { parts.push(el("p", "hint", t("it.no_backlog"))); }
      else {
        parts.push(table(["col.docking", "col.recorder", "col.port", "col.clips", "col.bytes",
                          "col.deadline", "col.left", "col.forecast", "col.level"],
          q.dockings.map(function (d) {
            var lvl = el("span");
            lvl.appendChild(levelSpan(d.level));
            var rs = (d.reason_codes || []).map(deadlineReason);
            if (rs.length) { lvl.appendChild(el("div", "hint", rs.join("; "))); }
            return row([d.docking_id, d.serial, d.port, d.clips_left, bytes(d.bytes_left),
                        when(d.deadline_at), dur(d.remaining_s), d.eta ? when(d.eta) : "–", lvl]);
          })));
      }
      if ((q.incomplete || []).length) {  /* recorders pulled before every clip was copied */
        parts.push(el("h2", "incomplete", t("it.incomplete")));
        parts.push(table(["col.docking", "col.recorder", "col.officer", "col.port",
                          "col.clips", "col.time"], q.incomplete.map(function (i) {
          return row([i.docking_id, i.serial, [i.officer_no, i.officer_name].filter(Boolean)
            .join(" "), i.port, t("it.not_copied", { n: i.uncopied, total: i.clips_total }),
            when(i.undocked_at)], "unfit");
        })));
      }
      parts.push(el("h2", null, t("it.targets")));
      parts.push(table(["col.target", "col.required", "col.throughput", "col.clips",
                        "col.bytes"], Object.keys(q.targets).map(function (name) {
        var tg = q.targets[name];
        return row([name, t(tg.required ? "yes" : "no"),
                    tg.throughput_bps ? bytes(tg.throughput_bps) + "/s" : t("not_measured"),
                    tg.clips_left, bytes(tg.bytes_left)]);
      })));
      parts.push(el("h2", null, t("it.alerts")));
      if (!q.alerts.length) { parts.push(el("p", "hint", t("it.no_alerts"))); }
      else {
        parts.push(table(["col.time", "col.level", "col.kind", "col.subject", "col.message"],
          q.alerts.map(function (a) {
            var kind = t("alertkind." + a.kind);
            return row([when(a.ts), levelSpan(a.level),
                        kind === "alertkind." + a.kind ? a.kind : kind, a.subject,
                        alertText(a, q)]);
          })));
      }
      main.replaceChildren.apply(main, parts);
    });
  }

  /* ------------------------------------------------------------------ polling */
  var views = { kiosk: kiosk, fleet: fleet, it: it };
  function start() {
    header();
    var main = document.getElementById("main");
    var offline = document.getElementById("offline");
    var updated = document.getElementById("updated");
    offline.textContent = t("offline");
    function tick() {
      views[conf.view](main).then(function () {
        offline.hidden = true;
        updated.textContent = t("updated", { time: CLOCK.format(new Date()) });
        document.body.dataset.loaded = "1";
      }).catch(function () {
        offline.hidden = false;
      }).then(function () {
        window.setTimeout(tick, conf.poll_ms);
      });
    }
    tick();
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else { start(); }
}());
