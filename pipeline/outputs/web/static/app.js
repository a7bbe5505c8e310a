// zsad review page: live camera cards and the alert review list.
// Plain DOM, no framework, no network beyond this server. Every piece of data reaches the page through
// textContent or a DOM attribute, never through innerHTML, so text from the run is never parsed as HTML.
"use strict";

(() => {
  const CAMERA_POLL_MS = 1000;
  const ALERT_POLL_MS = 3000;
  const STREAM_ORDER = ["predictive", "pixel", "motion", "semantic"];
  const LABEL_TEXT = { ack: "acknowledged", false_alarm: "false alarm" };
  const SVG_NS = "http://www.w3.org/2000/svg";
  const SPARK_H = 96;

  const $ = (id) => document.getElementById(id);
  const cameras = new Map(); // id -> {node, parts, points, lastT, info}
  const alertNodes = new Map(); // alert_id -> {node, parts, alert}
  let historyS = 300;
  let knownCameraIds = new Set();
  let cameraTimer = null;
  let alertTimer = null;

  // -- helpers ---------------------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function fmt(value, digits = 2) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
  }

  function fmtDuration(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "ongoing";
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const m = Math.floor(seconds / 60);
    const s = Math.round(seconds - 60 * m);
    return m < 60 ? `${m} min ${s} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function fmtAgo(iso) {
    const t = Date.parse(iso);
    if (!Number.isFinite(t)) return "";
    const s = Math.max(0, (Date.now() - t) / 1000);
    if (s < 60) return `${Math.round(s)} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return `${Math.round(s / 86400)} d ago`;
  }

  function fmtWhen(iso) {
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return d.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  function streamNames(obj) {
    const names = Object.keys(obj || {});
    names.sort((a, b) => {
      const ia = STREAM_ORDER.indexOf(a), ib = STREAM_ORDER.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
    });
    return names;
  }

  function driverOf(contributions) {
    let best = null;
    for (const [k, v] of Object.entries(contributions || {})) {
      if (typeof v === "number" && (best === null || v > contributions[best])) best = k;
    }
    return best;
  }

  async function getJSON(url) {
    const res = await fetch(url, { cache: "no-store", credentials: "same-origin" });
    if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`);
    return res.json();
  }

  function setConn(ok, text) {
    const conn = $("conn");
    conn.textContent = text;
    conn.className = "conn " + (ok ? "ok" : "bad");
  }

  // -- views -----------------------------------------------------------------------------------------

  function currentView() {
    return location.hash === "#alerts" ? "alerts" : "cameras";
  }

  function showView() {
    const view = currentView();
    $("view-cameras").hidden = view !== "cameras";
    $("view-alerts").hidden = view !== "alerts";
    $("tab-cameras").classList.toggle("active", view === "cameras");
    $("tab-alerts").classList.toggle("active", view === "alerts");
    pollCameras();
    pollAlerts();
  }

  // -- cameras ---------------------------------------------------------------------------------------

  function makeCard(info) {
    const node = el("article", "card");
    node.dataset.camera = info.id;
    const head = el("div", "card-head");
    const title = el("h2", "cam-id", info.id);
    const ctx = el("span", "chip ctx", info.context);
    const alarm = el("span", "chip alarm", "ALERT");
    alarm.hidden = true;
    const badge = el("span", "badge state");
    head.append(title, ctx, alarm, badge);

    const detail = el("div", "detail muted");
    const stats = el("div", "stats");
    const score = el("div", "score");
    const scoreValue = el("span", "score-value", "–");
    const scoreLabel = el("span", "score-label", "score");
    score.append(scoreValue, scoreLabel);
    const facts = el("dl", "facts");
    const fact = (name) => {
      const dt = el("dt", null, name);
      const dd = el("dd", null, "–");
      facts.append(dt, dd);
      return dd;
    };
    const threshold = fact("threshold");
    const fps = fact("fps");
    const updated = fact("updated");
    stats.append(score, facts);

    const spark = svg("svg", { class: "spark", height: SPARK_H, role: "img", "aria-label": `score of ${info.id}` });
    const axis = el("div", "spark-axis");
    const axisLeft = el("span", null, "");
    const axisRight = el("span", null, "now");
    axis.append(axisLeft, axisRight);
    const legend = el("div", "legend");
    node.append(head, detail, stats, spark, axis, legend);
    return {
      node,
      parts: { badge, detail, scoreValue, threshold, fps, updated, spark, legend, alarm, axisLeft },
      points: [],
      lastT: null,
      info,
    };
  }

  function updateCard(cam, info) {
    cam.info = info;
    const p = cam.parts;
    p.badge.textContent = info.state;
    p.badge.className = `badge state state-${info.state}`;
    p.detail.textContent = info.detail || "\u00a0";
    p.detail.title = info.uri || "";
    p.scoreValue.textContent = fmt(info.score);
    const thr = info.threshold;
    let level = "idle";
    if (typeof info.score === "number") {
      if (typeof thr === "number" && info.score >= thr) level = "high";
      else if (typeof thr === "number" && info.score >= 0.7 * thr) level = "elevated";
      else level = "normal";
    }
    p.scoreValue.className = `score-value level-${level}`;
    p.threshold.textContent = fmt(thr, 1);
    p.fps.textContent = fmt(info.fps, 1);
    p.updated.textContent =
      typeof info.score_age_s === "number" ? `${Math.round(info.score_age_s)} s ago` : "none yet";
    p.alarm.hidden = !info.open_alert;
    cam.node.classList.toggle("alarming", Boolean(info.open_alert));
    cam.node.classList.toggle("down", ["failed", "eos", "stopped"].includes(info.state));
  }

  function drawSpark(cam) {
    const p = cam.parts;
    const spark = p.spark;
    const w = Math.max(120, Math.round(spark.clientWidth || spark.getBoundingClientRect().width || 300));
    const h = SPARK_H;
    spark.setAttribute("viewBox", `0 0 ${w} ${h}`);
    while (spark.firstChild) spark.removeChild(spark.firstChild);
    const pts = cam.points;
    const thr = cam.info.threshold;
    const latest = pts.length ? pts[pts.length - 1].t : 0;
    const t0 = latest - historyS;
    p.axisLeft.textContent = `−${Math.round(historyS / 60)} min`;
    const streams = new Set();
    let lo = 0, hi = typeof thr === "number" ? thr * 1.25 : 1;
    for (const q of pts) {
      if (typeof q.score === "number") { lo = Math.min(lo, q.score); hi = Math.max(hi, q.score); }
      for (const [k, v] of Object.entries(q.contributions || {})) {
        streams.add(k);
        if (typeof v === "number") { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      }
    }
    const pad = 6;
    const x = (t) => ((t - t0) / historyS) * (w - 2) + 1;
    const y = (v) => h - pad - ((v - lo) / (hi - lo || 1)) * (h - 2 * pad);
    spark.append(svg("rect", { class: "spark-bg", x: 0, y: 0, width: w, height: h, rx: 4 }));
    if (lo < 0) spark.append(svg("line", { class: "spark-zero", x1: 0, x2: w, y1: y(0), y2: y(0) }));
    if (typeof thr === "number") {
      spark.append(svg("rect", { class: "spark-over", x: 0, y: 0, width: w, height: Math.max(0, y(thr)) }));
      spark.append(svg("line", { class: "spark-threshold", x1: 0, x2: w, y1: y(thr), y2: y(thr) }));
      const label = svg("text", { class: "spark-label", x: 4, y: Math.max(10, y(thr) - 3) });
      label.textContent = `threshold ${fmt(thr, 1)}`;
      spark.append(label);
    }
    for (const name of streamNames(Object.fromEntries([...streams].map((s) => [s, 1])))) {
      const coords = pts
        .filter((q) => typeof (q.contributions || {})[name] === "number")
        .map((q) => `${x(q.t).toFixed(1)},${y(q.contributions[name]).toFixed(1)}`);
      if (coords.length > 1) {
        spark.append(svg("polyline", { class: `spark-contrib stream-${name}`, "data-stream": name, points: coords.join(" ") }));
      }
    }
    const coords = pts
      .filter((q) => typeof q.score === "number")
      .map((q) => `${x(q.t).toFixed(1)},${y(q.score).toFixed(1)}`);
    spark.append(svg("polyline", { class: "spark-score", points: coords.join(" ") }));
    if (coords.length) {
      const [cx, cy] = coords[coords.length - 1].split(",");
      spark.append(svg("circle", { class: "spark-dot", cx, cy, r: 3 }));
    }
    drawLegend(cam, streams);
  }

  function drawLegend(cam, streams) {
    const legend = cam.parts.legend;
    const latest = cam.info.contributions || {};
    const driver = driverOf(latest);
    while (legend.firstChild) legend.removeChild(legend.firstChild);
    const score = el("span", "item");
    score.append(el("i", "swatch stream-score"), el("span", null, "fused"));
    legend.append(score);
    for (const name of streamNames(Object.fromEntries([...streams, ...Object.keys(latest)].map((s) => [s, 1])))) {
      const item = el("span", "item" + (name === driver ? " driver" : ""));
      item.title = name === driver ? "largest contribution now" : "contribution w·z";
      item.append(el("i", `swatch stream-${name}`), el("span", null, name), el("b", null, fmt(latest[name])));
      legend.append(item);
    }
  }

  async function pollCameras() {
    clearTimeout(cameraTimer);
    try {
      const data = await getJSON("/api/cameras");
      renderCameras(data.cameras);
      if (currentView() === "cameras") {
        await Promise.all(data.cameras.map((info) => pollScores(cameras.get(info.id))));
      }
      setConn(true, "● connected");
    } catch (err) {
      setConn(false, "● offline");
    } finally {
      clearTimeout(cameraTimer); // two overlapping polls must leave one timer, not two
      cameraTimer = setTimeout(pollCameras, CAMERA_POLL_MS);
    }
  }

  function renderCameras(list) {
    const grid = $("camera-grid");
    const seen = new Set();
    list.forEach((info, i) => {
      seen.add(info.id);
      let cam = cameras.get(info.id);
      if (!cam) {
        cam = makeCard(info);
        cameras.set(info.id, cam);
      }
      if (grid.children[i] !== cam.node) grid.insertBefore(cam.node, grid.children[i] || null);
      updateCard(cam, info);
    });
    for (const [id, cam] of cameras) {
      if (!seen.has(id)) { cam.node.remove(); cameras.delete(id); }
    }
    $("no-cameras").hidden = list.length > 0;
    const live = list.filter((c) => c.state === "live").length;
    const open = list.filter((c) => c.open_alert).length;
    $("count-cameras").textContent = String(list.length);
    $("summary").textContent = `${live}/${list.length} live · ${open} open alert${open === 1 ? "" : "s"}`;
    for (const c of list) knownCameraIds.add(c.id);
    refreshCameraFilter();
  }

  async function pollScores(cam) {
    if (!cam) return;
    // A score time behind what we have means the source restarted its clock: start over.
    if (cam.lastT !== null && typeof cam.info.score_t === "number" && cam.info.score_t < cam.lastT) {
      cam.points = [];
      cam.lastT = null;
    }
    const since = cam.lastT === null ? "" : `&since=${encodeURIComponent(cam.lastT)}`;
    const data = await getJSON(`/api/scores?camera=${encodeURIComponent(cam.info.id)}${since}`);
    historyS = data.history_s || historyS;
    if (data.points.length) {
      cam.points = cam.points.concat(data.points);
      cam.lastT = cam.points[cam.points.length - 1].t;
      const horizon = cam.lastT - historyS;
      cam.points = cam.points.filter((q) => q.t >= horizon);
    }
    drawSpark(cam);
  }

  // -- alerts ----------------------------------------------------------------------------------------

  function refreshCameraFilter() {
    const select = $("f-camera");
    const have = new Set([...select.options].map((o) => o.value));
    for (const id of [...knownCameraIds].sort()) {
      if (!have.has(id)) select.append(new Option(id, id));
    }
  }

  function alertQuery() {
    const q = new URLSearchParams();
    const camera = $("f-camera").value;
    if (camera) q.set("camera", camera);
    for (const [name, id] of [["since", "f-since"], ["until", "f-until"]]) {
      const v = $(id).value;
      if (v) {
        const d = new Date(v); // datetime-local is local time; the API takes ISO 8601 UTC
        if (!Number.isNaN(d.getTime())) q.set(name, d.toISOString());
      }
    }
    const label = $("f-label").value;
    if (label) q.set("label", label);
    q.set("limit", "200");
    return q.toString();
  }

  function makeAlertNode(a) {
    const node = el("article", "alert");
    node.dataset.alertId = a.alert_id;
    const media = el("div", "alert-media");
    const snapBox = el("figure", "media-box");
    const snapshot = el("img", "snapshot");
    snapshot.alt = `snapshot of ${a.camera} at the peak`;
    snapshot.loading = "lazy";
    const noSnap = el("div", "placeholder", "no snapshot");
    snapBox.append(snapshot, noSnap, el("figcaption", null, "peak frame"));
    const clipBox = el("figure", "media-box");
    const video = el("video", "clip");
    video.controls = true;
    video.preload = "metadata";
    video.muted = true;
    video.playsInline = true;
    const noClip = el("div", "placeholder", "clip pending");
    clipBox.append(video, noClip, el("figcaption", null, "clip"));
    media.append(snapBox, clipBox);

    const info = el("div", "alert-info");
    const title = el("div", "alert-title");
    const cam = el("span", "alert-camera", a.camera);
    const ctx = el("span", "chip ctx", a.context);
    const seq = el("span", "muted", `#${a.seq}`);
    const status = el("span", "badge");
    title.append(cam, ctx, seq, status);
    const when = el("div", "alert-when");
    const score = el("div", "alert-score");
    const driver = el("div", "alert-driver");
    const bars = el("div", "bars");
    const prompt = el("blockquote", "prompt");
    const review = el("div", "review");
    const label = el("span", "review-label");
    const note = el("input", "note");
    note.type = "text";
    note.placeholder = "note (optional)";
    note.maxLength = 1000;
    const ack = el("button", "btn ack", "Acknowledge");
    ack.type = "button";
    const fa = el("button", "btn false-alarm", "False alarm");
    fa.type = "button";
    const error = el("span", "error");
    review.append(label, note, ack, fa, error);
    info.append(title, when, score, driver, bars, prompt, review);
    node.append(media, info);

    const entry = {
      node,
      alert: a,
      parts: { snapshot, noSnap, video, noClip, status, when, score, driver, bars, prompt, label, note, ack, fa, error },
    };
    ack.addEventListener("click", () => sendLabel(entry, "ack"));
    fa.addEventListener("click", () => sendLabel(entry, "false_alarm"));
    return entry;
  }

  function updateAlertNode(entry, a) {
    entry.alert = a;
    const p = entry.parts;
    const snap = a.media && a.media.snapshot;
    if (snap && p.snapshot.getAttribute("src") !== snap) p.snapshot.src = snap;
    p.snapshot.hidden = !snap;
    p.noSnap.hidden = Boolean(snap);
    const clip = a.media && a.media.clip;
    if (clip && p.video.getAttribute("src") !== clip) p.video.src = clip; // set once: never restart playback
    p.video.hidden = !clip;
    p.noClip.hidden = Boolean(clip);
    p.noClip.textContent = a.clip ? "clip pending" : "no clip";

    p.status.textContent = a.status;
    p.status.className = `badge status-${a.status}`;
    entry.node.classList.toggle("open", a.status === "open");
    p.when.textContent = `${fmtWhen(a.start)} · ${fmtAgo(a.start)} · ${fmtDuration(a.duration_s)}`;
    p.when.title = `start ${a.start}${a.end ? `, end ${a.end}` : ""}`;
    const after = typeof a.peak_time === "number" && typeof a.start_pts === "number" ? a.peak_time - a.start_pts : null;
    p.score.textContent = `peak ${fmt(a.peak_score)} (threshold ${fmt(a.threshold, 1)})` +
      (after !== null ? ` at +${after.toFixed(1)} s` : "");
    const drv = a.driver || driverOf(a.contributions);
    p.driver.textContent = drv ? `driven by ${drv} (${fmt((a.contributions || {})[drv])})` : "no stream contributions";

    while (p.bars.firstChild) p.bars.removeChild(p.bars.firstChild);
    const contribs = a.contributions || {};
    const maxAbs = Math.max(1e-9, ...Object.values(contribs).filter((v) => typeof v === "number").map(Math.abs));
    for (const name of streamNames(contribs)) {
      const v = contribs[name];
      const row = el("div", "bar-row" + (name === drv ? " driver" : ""));
      const track = el("div", "bar-track");
      const fill = el("div", `bar-fill stream-${name}`);
      fill.style.width = `${(Math.abs(typeof v === "number" ? v : 0) / maxAbs) * 100}%`;
      track.append(fill);
      row.append(el("span", "bar-name", name), track, el("span", "bar-value", fmt(v)));
      p.bars.append(row);
    }

    p.prompt.textContent = a.prompt ? a.prompt : "";
    p.prompt.hidden = !a.prompt;
    showReview(entry, a.review);
  }

  function showReview(entry, review) {
    const p = entry.parts;
    const label = review && review.label;
    p.label.textContent = label ? LABEL_TEXT[label] || label : "unreviewed";
    p.label.className = `review-label label-${label || "none"}`;
    p.ack.classList.toggle("active", label === "ack");
    p.fa.classList.toggle("active", label === "false_alarm");
    p.ack.setAttribute("aria-pressed", String(label === "ack"));
    p.fa.setAttribute("aria-pressed", String(label === "false_alarm"));
    if (document.activeElement !== p.note) p.note.value = (review && review.note) || "";
    entry.node.classList.toggle("reviewed", Boolean(label));
  }

  async function sendLabel(entry, label) {
    const current = entry.alert.review && entry.alert.review.label;
    const next = current === label ? null : label; // clicking the active verdict again clears it
    const p = entry.parts;
    p.error.textContent = "";
    try {
      const res = await fetch(`/api/alerts/${encodeURIComponent(entry.alert.alert_id)}/label`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        credentials: "same-origin",
        body: JSON.stringify({ label: next, note: p.note.value || null }),
      });
      const data = await res.json();
      if (!res.ok) throw new Error(data.error || `HTTP ${res.status}`);
      entry.alert.review = data.review;
      showReview(entry, data.review);
    } catch (err) {
      p.error.textContent = `not saved: ${err.message}`;
    }
  }

  let alertQueryInFlight = null;

  async function pollAlerts() {
    clearTimeout(alertTimer);
    const query = alertQuery();
    alertQueryInFlight = query;
    try {
      const data = await getJSON(`/api/alerts?${query}`);
      if (alertQueryInFlight === query) renderAlerts(data.alerts);
      setConn(true, "● connected");
    } catch (err) {
      setConn(false, "● offline");
    } finally {
      clearTimeout(alertTimer);
      alertTimer = setTimeout(pollAlerts, ALERT_POLL_MS);
    }
  }

  function renderAlerts(list) {
    const box = $("alert-list");
    const seen = new Set();
    list.forEach((a, i) => {
      seen.add(a.alert_id);
      knownCameraIds.add(a.camera);
      let entry = alertNodes.get(a.alert_id);
      if (!entry) {
        entry = makeAlertNode(a);
        alertNodes.set(a.alert_id, entry);
      }
      // Move a node only when out of place: moving a <video> pauses it.
      if (box.children[i] !== entry.node) box.insertBefore(entry.node, box.children[i] || null);
      updateAlertNode(entry, a);
    });
    for (const [id, entry] of alertNodes) {
      if (!seen.has(id)) { entry.node.remove(); alertNodes.delete(id); }
    }
    $("no-alerts").hidden = list.length > 0;
    $("count-alerts").textContent = String(list.length);
    refreshCameraFilter();
  }

  // -- start -----------------------------------------------------------------------------------------

  function start() {
    for (const id of ["f-camera", "f-since", "f-until", "f-label"]) $(id).addEventListener("change", pollAlerts);
    $("f-clear").addEventListener("click", () => {
      $("filters").reset();
      pollAlerts();
    });
    window.addEventListener("hashchange", showView);
    window.addEventListener("resize", () => { for (const cam of cameras.values()) drawSpark(cam); });
    showView(); // starts both polls: cameras every second, alerts every few seconds
  }

  start();
})();
