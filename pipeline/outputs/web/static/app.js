// zsad review page: live camera cards, the alert review list and the per-camera zone editor.
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
  const FRAME_POLL_MS = 2000;
  const ZONE_COLOURS = 6; // .zc-0 .. .zc-5 in style.css

  const $ = (id) => document.getElementById(id);
  const cameras = new Map(); // id -> {node, parts, points, lastT, info}
  const alertNodes = new Map(); // alert_id -> {node, parts, alert}
  let historyS = 300;
  let knownCameraIds = new Set();
  const knownZones = new Set();
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
    if (location.hash === "#alerts") return "alerts";
    if (location.hash === "#zones" || location.hash.startsWith("#zones/")) return "zones";
    return "cameras";
  }

  function showView() {
    const view = currentView();
    for (const name of ["cameras", "alerts", "zones"]) {
      $(`view-${name}`).hidden = view !== name;
      $(`tab-${name}`).classList.toggle("active", view === name);
    }
    if (view === "zones") {
      const wanted = location.hash.startsWith("#zones/") ? decodeURIComponent(location.hash.slice(7)) : null;
      openEditor(wanted || editor.camera);
    } else {
      stopFrames();
    }
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
    const foot = el("div", "card-foot");
    const zoneInfo = el("span", "zone-info muted");
    const learned = el("span", "learned muted");
    const trust = el("span", "trust muted");
    const edit = el("a", "btn small edit-zones", "Edit zones");
    edit.href = `#zones/${encodeURIComponent(info.id)}`;
    edit.setAttribute("aria-label", `edit the masks and zones of ${info.id}`);
    foot.append(zoneInfo, learned, trust, edit);
    node.append(head, detail, stats, spark, axis, legend, foot);
    return {
      node,
      parts: { badge, detail, scoreValue, threshold, fps, updated, spark, legend, alarm, axisLeft, zoneInfo, learned, trust },
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
    p.zoneInfo.textContent = zoneSummary(info.zones);
    p.learned.textContent = learnedText(info.learned);
    p.trust.textContent = trustText(info.trust);
    p.trust.title = trustTitle(info.trust);
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

  function zoneSummary(zones) {
    if (!zones) return "";
    const parts = [];
    const names = zones.names || [];
    parts.push(names.length ? `zones: ${names.join(", ")}` : "no zones");
    if (zones.masks) parts.push(`${zones.masks} mask${zones.masks === 1 ? "" : "s"}`);
    if (zones.alert_zones) parts.push(`alerts only in ${zones.alert_zones.join(", ")}`);
    return parts.join(" · ");
  }

  // "learned from N false alarms (last: <time>)": what the operator's verdicts changed on this camera.
  function learnedText(learned) {
    if (!learned) return "";
    if (learned.enabled === false) return "cannot learn from false alarms";
    const n = learned.labels || 0;
    if (!n) return "learned from no false alarms yet";
    const last = learned.updated ? ` (last: ${fmtWhen(learned.updated)})` : "";
    return `learned from ${n} false alarm${n === 1 ? "" : "s"}${last}`;
  }

  // Which streams the camera's calibration trusts (/api/cameras "trust"): a short line, the reasons on hover.
  function trustText(trust) {
    if (!trust) return "";
    const rows = trust.streams || [];
    const named = (verdict) => rows.filter((r) => r.verdict === verdict).map((r) => r.stream);
    const parts = [];
    const out = named("left out");
    const down = named("weighed down");
    if (out.length) parts.push(`left out: ${out.join(", ")}`);
    if (down.length) parts.push(`weighed down: ${down.join(", ")}`);
    let text = `fusion ${trust.rule}`;
    if (parts.length) text += ` · ${parts.join(" · ")}`;
    else if (rows.some((r) => r.verdict === "trusted")) text += " · all streams trusted";
    // The max rule's agreement term: streams rising together count (docs/alerts.md, Fusion).
    if (trust.agreement) text += ` · agreement of ${(trust.agreement.streams || []).length} streams`;
    return text;
  }

  function trustTitle(trust) {
    if (!trust) return "";
    return (trust.streams || [])
      .map((r) => `${r.stream}: weight ${fmt(r.weight, 2)}, ${r.verdict} (${r.reason})`)
      .join("\n");
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
    for (const c of list) {
      knownCameraIds.add(c.id);
      for (const z of (c.zones && c.zones.names) || []) knownZones.add(z);
    }
    refreshCameraFilter();
    refreshEditorCameras();
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
    const zoneSelect = $("f-zone");
    const haveZones = new Set([...zoneSelect.options].map((o) => o.value));
    for (const name of [...knownZones].sort()) {
      if (!haveZones.has(name)) zoneSelect.append(new Option(name, name));
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
    const zone = $("f-zone").value;
    if (zone) q.set("zone", zone);
    q.set("limit", "200");
    return q.toString();
  }

  function makeAlertNode(a) {
    const node = el("article", "alert");
    node.dataset.alertId = a.alert_id;
    const media = el("div", "alert-media");
    const snapBox = el("figure", "media-box");
    const snapWrap = el("div", "snap-wrap");
    const snapshot = el("img", "snapshot");
    snapshot.alt = `snapshot of ${a.camera} at the peak`;
    snapshot.loading = "lazy";
    // The peak box in the snapshot's own pixels; "meet" letterboxes like the image's object-fit: contain.
    const peak = svg("svg", { class: "peak-overlay", preserveAspectRatio: "xMidYMid meet", "aria-hidden": "true" });
    snapWrap.append(snapshot, peak);
    const noSnap = el("div", "placeholder", "no snapshot");
    // Heatmap or plain snapshot: the heatmap by default when the alert has one.
    const snapCaption = el("figcaption", "snap-caption");
    const snapLabel = el("span", null, "peak frame");
    const viewToggle = el("button", "btn small view-toggle", "Heatmap");
    viewToggle.type = "button";
    viewToggle.title = "show the peak's evidence heatmap over the snapshot, or the plain snapshot";
    snapCaption.append(snapLabel, viewToggle);
    snapBox.append(snapWrap, noSnap, snapCaption);
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
    const zone = el("span", "chip zone");
    const status = el("span", "badge");
    title.append(cam, ctx, seq, zone, status);
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
    const learning = el("div", "learning");
    learning.setAttribute("aria-live", "polite");
    review.append(label, note, ack, fa, error, learning);
    info.append(title, when, score, driver, bars, prompt, review);
    node.append(media, info);

    const entry = {
      node,
      alert: a,
      view: null, // the operator's choice, "heatmap" or "snapshot"; null: the default
      parts: {
        snapshot, snapWrap, peak, noSnap, snapLabel, viewToggle, video, noClip, status, zone, when, score,
        driver, bars, prompt, label, note, ack, fa, error, learning,
      },
    };
    viewToggle.addEventListener("click", () => {
      entry.view = viewToggle.getAttribute("aria-pressed") === "true" ? "snapshot" : "heatmap";
      showSnapshot(entry, entry.alert);
    });
    ack.addEventListener("click", () => sendLabel(entry, "ack"));
    fa.addEventListener("click", () => sendLabel(entry, "false_alarm"));
    return entry;
  }

  function updateAlertNode(entry, a) {
    entry.alert = a;
    const p = entry.parts;
    showSnapshot(entry, a);
    p.zone.textContent = a.zone ? `zone ${a.zone}` : "";
    p.zone.title = a.zone ? "the zone the alert's peak is in" : "";
    p.zone.hidden = !a.zone;
    if (a.zone) knownZones.add(a.zone);
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
    // "agreement": the fusion's agreement term led, no single stream did (the streams rose together).
    p.driver.textContent = drv === "agreement"
      ? `driven by the streams together (agreement ${fmt(a.agreement)})`
      : drv ? `driven by ${drv} (${fmt((a.contributions || {})[drv])})` : "no stream contributions";

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

  // The snapshot or its heatmap (default when there is one); the peak box is drawn over either.
  function showSnapshot(entry, a) {
    const p = entry.parts;
    const snap = a.media && a.media.snapshot;
    const heat = a.media && a.media.heatmap;
    const showHeat = Boolean(heat) && entry.view !== "snapshot";
    const src = showHeat ? heat : snap;
    if (src && p.snapshot.getAttribute("src") !== src) p.snapshot.src = src;
    p.snapshot.alt = showHeat ? `evidence heatmap of ${a.camera} at the peak` : `snapshot of ${a.camera} at the peak`;
    p.snapWrap.hidden = !src;
    p.snapWrap.classList.toggle("heatmap", showHeat);
    p.snapWrap.dataset.view = showHeat ? "heatmap" : "snapshot";
    p.noSnap.hidden = Boolean(src);
    p.snapLabel.textContent = showHeat ? "peak frame · heatmap" : "peak frame";
    p.viewToggle.hidden = !(heat && snap);
    p.viewToggle.setAttribute("aria-pressed", String(showHeat));
    drawPeakBox(p.peak, a.peak_box);
  }

  function drawPeakBox(overlay, box) {
    while (overlay.firstChild) overlay.removeChild(overlay.firstChild);
    const ok = box && [box.x0, box.y0, box.x1, box.y1, box.width, box.height].every((v) => typeof v === "number");
    overlay.hidden = !ok;
    if (!ok) return;
    overlay.setAttribute("viewBox", `0 0 ${box.width} ${box.height}`);
    overlay.append(svg("rect", {
      class: "peak-box", x: box.x0, y: box.y0,
      width: Math.max(1, box.x1 - box.x0), height: Math.max(1, box.y1 - box.y0),
    }));
  }

  // What a verdict does to the camera, from the label reply's `learning` (or, on load, from /api/cameras).
  function learningNote(camera, alertId, label, learning) {
    if (learning === null) return label === "false_alarm" ? `${camera} is not running: the verdict is stored only` : "";
    if (!learning) return "";
    if (learning.enabled === false) return label === "false_alarm" ? `${camera} cannot learn from false alarms` : "";
    const learnedIt = (learning.alerts || []).includes(alertId);
    const total = `${learnedText(learning)}`;
    if (label === "false_alarm" && learnedIt) {
      return `${camera} will learn from this: the same scene there stops alarming · ${total}`;
    }
    if (label !== "false_alarm" && learnedIt === false && entryWasLearned.has(alertId)) {
      return `${camera} forgot this false alarm · ${total}`;
    }
    return "";
  }
  const entryWasLearned = new Set(); // alerts this page saw learned, so un-marking can say it was forgotten

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
    if (!entry.learningFromReply) {
      const cam = cameras.get(entry.alert.camera);
      const learned = cam && cam.info.learned;
      const note = label === "false_alarm" && learned && (learned.alerts || []).includes(entry.alert.alert_id)
        ? `${entry.alert.camera} learned from this false alarm` : "";
      if (note) entryWasLearned.add(entry.alert.alert_id);
      p.learning.textContent = note;
    }
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
      if ("learning" in data) {
        const id = entry.alert.alert_id;
        p.learning.textContent = learningNote(entry.alert.camera, id, next, data.learning);
        entry.learningFromReply = true; // keep this reply's words until the page reloads
        if (data.learning && (data.learning.alerts || []).includes(id)) entryWasLearned.add(id);
        else entryWasLearned.delete(id);
      }
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


  // -- zone editor -----------------------------------------------------------------------------------
  // Polygons are kept in normalised [x, y] (0..1 from the top-left corner), as the API stores them. The
  // overlay's viewBox is the frame's pixel size, so circles and labels are not stretched.

  const editor = {
    camera: null,
    data: null, // the last GET/PUT/DELETE reply: what is in force, the config's and the overrides file
    zones: [],
    mask: [],
    alertZones: null,
    drawing: [],
    dirty: false,
    frameTimer: null,
    size: [320, 240],
  };

  function refreshEditorCameras() {
    // Only running cameras have zones to edit (the alert filter keeps every camera seen: its alerts stay);
    // the camera open in the editor stays listed, so a removal does not pull the form from under a hand.
    const select = $("z-camera");
    for (const option of [...select.options]) {
      if (!cameras.has(option.value) && option.value !== editor.camera) option.remove();
    }
    const have = new Set([...select.options].map((o) => o.value));
    for (const id of [...cameras.keys()].sort()) {
      if (!have.has(id)) select.append(new Option(id, id));
    }
    if (currentView() === "zones" && !editor.camera && select.options.length) openEditor(select.options[0].value);
  }

  function setZoneStatus(text, bad) {
    $("z-status").textContent = text;
    $("z-status").className = bad ? "error" : "muted";
  }

  function showProblems(problems) {
    const list = $("z-problems");
    while (list.firstChild) list.removeChild(list.firstChild);
    for (const pr of problems || []) {
      const li = el("li", "problem");
      li.dataset.field = pr.field || "";
      li.append(el("code", null, pr.field || "(body)"), el("span", null, `: ${pr.message}`));
      list.append(li);
    }
  }

  async function openEditor(camera) {
    if (!camera) {
      refreshEditorCameras();
      return;
    }
    const changed = camera !== editor.camera;
    editor.camera = camera;
    if ($("z-camera").value !== camera) {
      if (![...$("z-camera").options].some((o) => o.value === camera)) $("z-camera").append(new Option(camera, camera));
      $("z-camera").value = camera;
    }
    startFrames();
    if (changed || !editor.data) {
      editor.data = null;
      editor.drawing = [];
      showProblems([]);
      setZoneStatus("loading…");
      try {
        loadZones(await getJSON(`/api/cameras/${encodeURIComponent(camera)}/zones`));
        setZoneStatus(overridesText(editor.data));
      } catch (err) {
        setZoneStatus(`cannot load the zones of ${camera}: ${err.message}`, true);
      }
    }
  }

  function overridesText(data) {
    const o = data && data.overrides;
    if (!o || !o.exists) return "In force: the site config's zones (no overrides file).";
    return `In force: the site config with ${o.path} over it (${(o.keys || []).join(", ") || "nothing valid"}).`;
  }

  function loadZones(data) {
    editor.data = data;
    editor.zones = (data.zones || []).map((z) => ({ name: z.name, points: z.points.map((q) => q.slice()), alert: z.alert !== false }));
    editor.mask = (data.mask || []).map((poly) => poly.map((q) => q.slice()));
    editor.alertZones = data.alert_zones ? data.alert_zones.slice() : null;
    editor.drawing = [];
    editor.dirty = false;
    for (const z of editor.zones) knownZones.add(z.name);
    refreshCameraFilter();
    renderEditor();
  }

  function startFrames() {
    if (editor.frameTimer === null) loadFrame();
  }

  function stopFrames() {
    clearTimeout(editor.frameTimer);
    editor.frameTimer = null;
  }

  // The next frame is asked for only once the last one loaded or failed: requests never pile up.
  function loadFrame() {
    if (!editor.camera || currentView() !== "zones") { editor.frameTimer = null; return; }
    const img = $("z-frame");
    img.src = `/api/cameras/${encodeURIComponent(editor.camera)}/frame.jpg?t=${Date.now()}`;
    editor.frameTimer = -1;
  }

  function frameLoaded(ok) {
    const img = $("z-frame");
    if (ok) {
      const size = [img.naturalWidth || 320, img.naturalHeight || 240];
      const resized = size[0] !== editor.size[0] || size[1] !== editor.size[1];
      editor.size = size;
      $("z-frame-note").textContent = `live frame ${size[0]} × ${size[1]}, ${new Date().toLocaleTimeString()}`;
      if (resized) renderEditor();
    } else {
      $("z-frame-note").textContent = "no frame yet: the camera has not delivered one";
    }
    $("z-stage").classList.toggle("no-frame", !ok);
    $("z-noframe").hidden = ok;
    if (editor.frameTimer !== null) editor.frameTimer = setTimeout(loadFrame, FRAME_POLL_MS);
  }

  function polyPoints(points) {
    const [w, h] = editor.size;
    return points.map(([x, y]) => `${(x * w).toFixed(1)},${(y * h).toFixed(1)}`).join(" ");
  }

  function centroid(points) {
    const n = points.length || 1;
    return [points.reduce((s, q) => s + q[0], 0) / n, points.reduce((s, q) => s + q[1], 0) / n];
  }

  function renderEditor() {
    const overlay = $("z-overlay");
    const [w, h] = editor.size;
    overlay.setAttribute("viewBox", `0 0 ${w} ${h}`);
    while (overlay.firstChild) overlay.removeChild(overlay.firstChild);
    const fontSize = Math.max(8, w / 34);
    // Mask labels sit at the centre, zone labels in the top-left corner: a mask over a zone keeps both legible.
    const label = (text, points, cls, corner) => {
      const [cx, cy] = corner
        ? [Math.min(...points.map((q) => q[0])) * w + fontSize * 0.4, Math.min(...points.map((q) => q[1])) * h + fontSize * 0.9]
        : [centroid(points)[0] * w, centroid(points)[1] * h];
      const t = svg("text", { class: `z-label ${cls}${corner ? " z-label-corner" : ""}`, x: cx, y: cy, "font-size": fontSize });
      t.textContent = text;
      overlay.append(t);
    };
    editor.mask.forEach((poly, i) => {
      overlay.append(svg("polygon", { class: "z-mask", "data-kind": "mask", "data-index": i, points: polyPoints(poly) }));
      label(`mask ${i + 1}`, poly, "z-label-mask", false);
    });
    editor.zones.forEach((z, i) => {
      const cls = `z-zone zc-${i % ZONE_COLOURS}${z.alert ? "" : " no-alert"}`;
      overlay.append(svg("polygon", { class: cls, "data-kind": "zone", "data-index": i, points: polyPoints(z.points) }));
      label(z.alert ? z.name : `${z.name} (no alerts)`, z.points, `zc-${i % ZONE_COLOURS}`, true);
    });
    if (editor.drawing.length) {
      overlay.append(svg("polyline", { class: "z-drawing", points: polyPoints(editor.drawing) }));
      for (const [x, y] of editor.drawing) {
        overlay.append(svg("circle", { class: "z-vertex", cx: x * w, cy: y * h, r: Math.max(2, w / 110) }));
      }
    }
    const n = editor.drawing.length;
    $("z-drawing").textContent = n
      ? `${n} point${n === 1 ? "" : "s"}${n < 3 ? `: ${3 - n} more to close` : ": double-click or Close polygon"}`
      : "Click on the frame to start a polygon.";
    $("z-close").disabled = n < 3;
    $("z-undo").disabled = n === 0;
    $("z-cancel").disabled = n === 0;
    renderZoneList();
  }

  function renderZoneList() {
    const list = $("z-list");
    while (list.firstChild) list.removeChild(list.firstChild);
    const row = (kind, i, name, colour) => {
      const li = el("li", "zone-item");
      li.dataset.kind = kind;
      li.dataset.index = String(i);
      li.append(el("i", `swatch-box ${colour}`), el("span", "zone-name", name));
      const del = el("button", "btn small ghost delete", "Delete");
      del.type = "button";
      del.setAttribute("aria-label", `delete ${name}`);
      del.addEventListener("click", () => {
        if (kind === "mask") editor.mask.splice(i, 1);
        else editor.zones.splice(i, 1);
        markDirty();
      });
      const hl = (on) => {
        const poly = $("z-overlay").querySelector(`polygon[data-kind="${kind}"][data-index="${i}"]`);
        if (poly) poly.classList.toggle("hl", on);
      };
      li.addEventListener("mouseenter", () => hl(true));
      li.addEventListener("mouseleave", () => hl(false));
      li.addEventListener("focusin", () => hl(true));
      li.addEventListener("focusout", () => hl(false));
      return [li, del];
    };
    editor.mask.forEach((poly, i) => {
      const [li, del] = row("mask", i, `mask ${i + 1}`, "z-mask-swatch");
      li.append(el("span", "muted", `${poly.length} points`), del);
      list.append(li);
    });
    editor.zones.forEach((z, i) => {
      const [li, del] = row("zone", i, `zone ${z.name}`, `zc-${i % ZONE_COLOURS}`);
      const box = el("label", "inline");
      const check = el("input");
      check.type = "checkbox";
      check.checked = z.alert;
      check.setAttribute("aria-label", `alerts in ${z.name}`);
      check.addEventListener("change", () => { z.alert = check.checked; markDirty(); });
      box.append(check, document.createTextNode(" alerts here"));
      li.append(box, del);
      list.append(li);
    });
    if (!list.firstChild) list.append(el("li", "muted", "No masks or zones: the whole view is scored."));
    $("z-alert-zones").textContent = editor.alertZones
      ? `Alerts only when the peak is in: ${editor.alertZones.join(", ")}`
      : "Alerts anywhere outside the masks (no alert_zones).";
  }

  function markDirty() {
    editor.dirty = true;
    setZoneStatus("Unsaved changes: Save writes them to the camera's overrides file.");
    renderEditor();
  }

  function stagePoint(ev) {
    const rect = $("z-overlay").getBoundingClientRect();
    const clamp = (v) => Math.min(1, Math.max(0, v));
    const round = (v) => Math.round(v * 10000) / 10000;
    return [round(clamp((ev.clientX - rect.left) / rect.width)), round(clamp((ev.clientY - rect.top) / rect.height))];
  }

  function closePolygon() {
    const points = editor.drawing;
    if (points.length < 3) {
      setZoneStatus("A polygon needs at least 3 points.", true);
      return;
    }
    if ($("z-kind-zone").checked) {
      const name = $("z-name").value.trim();
      if (!name) {
        setZoneStatus("Name the zone first (letters, digits, '_', '.', '-').", true);
        $("z-name").focus();
        return;
      }
      editor.zones.push({ name, points: points.slice(), alert: $("z-alert").checked });
      $("z-name").value = "";
    } else {
      editor.mask.push(points.slice());
    }
    editor.drawing = [];
    markDirty();
  }

  // Only the keys that differ from the site config (or are overridden already) are sent, so the overrides
  // file holds what the operator changed and later edits of the config's other keys still apply.
  function zonesBody() {
    const data = editor.data || {};
    const config = data.config || {};
    const overridden = new Set((data.overrides && data.overrides.keys) || []);
    const normZones = (zs) => JSON.stringify((zs || []).map((z) => [z.name, z.points, z.alert !== false]));
    const body = {};
    if (overridden.has("zones") || normZones(editor.zones) !== normZones(config.zones)) body.zones = editor.zones;
    if (overridden.has("mask") || JSON.stringify(editor.mask) !== JSON.stringify(config.mask || [])) body.mask = editor.mask;
    if (overridden.has("alert_zones") || JSON.stringify(editor.alertZones) !== JSON.stringify(config.alert_zones || null)) {
      body.alert_zones = editor.alertZones;
    }
    return body;
  }

  async function writeZones(method) {
    if (!editor.camera) return;
    const body = method === "PUT" ? zonesBody() : null;
    if (body && !Object.keys(body).length) {
      setZoneStatus("Nothing to save: this is what the site config says.");
      return;
    }
    // The version the edit started from: the server refuses the save (409) if another editor or a reload
    // changed the zones since, instead of silently overwriting them.
    if (body && editor.data && editor.data.version) body.version = editor.data.version;
    showProblems([]);
    setZoneStatus(method === "PUT" ? "saving…" : "reverting…");
    try {
      const init = { method, credentials: "same-origin" };
      if (body) {
        init.headers = { "Content-Type": "application/json" };
        init.body = JSON.stringify(body);
      }
      const res = await fetch(`/api/cameras/${encodeURIComponent(editor.camera)}/zones`, init);
      const data = await res.json();
      if (!res.ok) {
        showProblems(data.problems || []);
        setZoneStatus(data.problems ? `Not saved: ${data.problems.length} problem${data.problems.length === 1 ? "" : "s"}:` : `Not saved: ${data.error}`, true);
        return;
      }
      loadZones(data);
      setZoneStatus(method === "PUT"
        ? `Saved to ${data.overrides.path}: in force from the camera's next clip.`
        : "Reverted: the site config's zones are in force.");
    } catch (err) {
      setZoneStatus(`Not saved: ${err.message}`, true);
    }
  }

  function startEditor() {
    const overlay = $("z-overlay");
    overlay.addEventListener("click", (ev) => {
      if (ev.detail > 1) return; // the clicks of a double-click close the polygon, they add no points
      editor.drawing.push(stagePoint(ev));
      renderEditor();
    });
    // A double-click would also select the text nearby; drawing is not selecting.
    overlay.addEventListener("mousedown", (ev) => { if (ev.detail > 1) ev.preventDefault(); });
    overlay.addEventListener("dblclick", (ev) => { ev.preventDefault(); closePolygon(); });
    $("z-frame").addEventListener("load", () => frameLoaded(true));
    $("z-frame").addEventListener("error", () => frameLoaded(false));
    $("z-close").addEventListener("click", closePolygon);
    $("z-undo").addEventListener("click", () => { editor.drawing.pop(); renderEditor(); });
    $("z-cancel").addEventListener("click", () => { editor.drawing = []; renderEditor(); });
    $("z-save").addEventListener("click", () => writeZones("PUT"));
    $("z-revert").addEventListener("click", () => writeZones("DELETE"));
    $("z-name").addEventListener("focus", () => { $("z-kind-zone").checked = true; });
    $("z-form").addEventListener("submit", (ev) => ev.preventDefault());
    $("z-camera").addEventListener("change", () => { location.hash = `#zones/${encodeURIComponent($("z-camera").value)}`; });
    document.addEventListener("keydown", (ev) => {
      if (currentView() !== "zones" || ev.target.tagName === "INPUT") return;
      if (ev.key === "Escape") { editor.drawing = []; renderEditor(); }
      if (ev.key === "Enter" && editor.drawing.length >= 3) closePolygon();
    });
    renderEditor();
  }

  // -- start -----------------------------------------------------------------------------------------

  function start() {
    for (const id of ["f-camera", "f-since", "f-until", "f-label", "f-zone"]) {
      $(id).addEventListener("change", pollAlerts);
    }
    startEditor();
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
