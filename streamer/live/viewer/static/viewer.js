// tomo-streamer live view: renders what the viewer server forwards from the live feed.
// Text messages are JSON ({kind: ...}); binary ones are [uint32 n][n bytes JSON][images],
// images float32 (little-endian) or uint8 (mapped from their window). Contrast is applied
// here, so changing it never asks the server for anything.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEYS = ["projections", "flats", "darks"];
  const state = {
    ws: null,
    images: new Map(), // canvas id -> last image drawn (redrawn when the contrast changes)
    history: [],
    sliceMax: 0,
    chosen: null,
    control: false,
  };

  // --- images ---------------------------------------------------------------------------

  function parseFrame(buffer) {
    const view = new DataView(buffer);
    const length = view.getUint32(0, true);
    const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
    let offset = 4 + length;
    const size = meta.dtype === "uint8" ? 1 : 4;
    const images = meta.images.map((spec) => {
      const count = spec.shape[0] * spec.shape[1];
      const data = size === 1 ? new Uint8Array(buffer, offset, count)
        : new Float32Array(buffer, offset, count);
      offset += count * size;
      return { name: spec.name, height: spec.shape[0], width: spec.shape[1],
               window: spec.window, dtype: meta.dtype, data };
    });
    return { meta, images };
  }

  function physical(image) {
    if (image.dtype !== "uint8") return image.data;
    const [low, high] = image.window;
    const out = new Float32Array(image.data.length);
    const step = (high - low) / 255;
    for (let i = 0; i < out.length; i++) out[i] = low + image.data[i] * step;
    return out;
  }

  function percentile(sorted, pct) {
    if (!sorted.length) return 0;
    const at = Math.min(sorted.length - 1, Math.max(0, Math.round(pct / 100 * (sorted.length - 1))));
    return sorted[at];
  }

  function windowFor(values) {
    const mode = document.querySelector("input[name=contrast]:checked").value;
    if (mode === "manual") {
      const low = parseFloat($("win-min").value);
      const high = parseFloat($("win-max").value);
      if (Number.isFinite(low) && Number.isFinite(high) && high > low) return [low, high];
    }
    const stride = Math.max(1, Math.floor(values.length / 20000));
    const sample = [];
    for (let i = 0; i < values.length; i += stride) {
      if (Number.isFinite(values[i])) sample.push(values[i]);
    }
    sample.sort((a, b) => a - b);
    let low = percentile(sample, parseFloat($("pct-low").value) || 0);
    let high = percentile(sample, parseFloat($("pct-high").value) || 100);
    if (!(high > low)) high = low + 1;
    return [low, high];
  }

  function draw(canvas, image) {
    canvas.width = image.width;
    canvas.height = image.height;
    const context = canvas.getContext("2d");
    const out = context.createImageData(image.width, image.height);
    const values = physical(image);
    const [low, high] = windowFor(values);
    const scale = 255 / (high - low);
    for (let i = 0; i < values.length; i++) {
      const grey = Math.max(0, Math.min(255, (values[i] - low) * scale));
      out.data[4 * i] = out.data[4 * i + 1] = out.data[4 * i + 2] = grey;
      out.data[4 * i + 3] = 255;
    }
    context.putImageData(out, 0, 0);
    canvas.dataset.version = String(Number(canvas.dataset.version || 0) + 1);
    canvas.dataset.window = `${low.toPrecision(4)} … ${high.toPrecision(4)}`;
    canvas.title = `${image.name}: window ${canvas.dataset.window}`;
    state.images.set(canvas.id, image);
  }

  function redrawAll() {
    for (const [id, image] of state.images) {
      const canvas = $(id);
      if (canvas) draw(canvas, image);
    }
  }

  // --- messages -------------------------------------------------------------------------

  function text(id, value) { $(id).textContent = value === null || value === undefined ? "–" : value; }

  function badge(id, label, kind) {
    const element = $(id);
    element.textContent = label;
    element.className = `badge ${kind || ""}`;
  }

  function setCenter(center, method) {
    if (center !== null && center !== undefined) text("center-value", Number(center).toFixed(2));
    if (method) text("center-method", `(${method})`);
  }

  function setRows(rows) {
    const select = $("sweep-row");
    const wanted = rows.map(String).join(",");
    if (select.dataset.rows === wanted) return;
    select.dataset.rows = wanted;
    select.replaceChildren(...rows.map((row, i) => {
      const option = document.createElement("option");
      option.value = String(row);
      option.textContent = String(row);
      option.selected = i === Math.floor(rows.length / 2);
      return option;
    }));
  }

  // A canvas back to its empty state: nothing drawn, no scan, version 0.
  function clearCanvas(id) {
    const canvas = $(id);
    canvas.width = 1;
    canvas.height = 1;
    canvas.getContext("2d").clearRect(0, 0, 1, 1);
    canvas.dataset.version = "0";
    delete canvas.dataset.scan;
    delete canvas.dataset.index;
    canvas.title = "";
    canvas.style.height = "";
    state.images.delete(id);
  }

  // A new scan: nothing of the previous one stays on the page (its final slice, cuts,
  // volume path, CoR choice), so that no image or label is taken for the new scan's.
  function onScanStart(m) {
    text("scan-id", m.scan);
    badge("scan-state", "open", "ok");
    setCenter(m.center, m.center_method || "preview");
    setRows(m.preview_rows);
    text("preview-info", `rows ${m.preview_rows.join(", ")}, binning ${m.binning}`
      + stageText(m.preview_stage, m.preview_not_applied));
    text("scan-result", "");
    $("scan-result").className = "";
    $("previews").replaceChildren();
    $("sweep-grid").replaceChildren();
    for (const id of ["slice-canvas", "cut-xy", "cut-xz", "cut-yz"]) clearCanvas(id);
    text("slice-info", "after the scan");
    text("cuts-info", "");
    for (const id of ["slice-index", "slice-number"]) {
      $(id).max = "0";
      $(id).value = "0";
    }
    state.chosen = null;
    text("sweep-chosen", "–");
    $("sweep-apply").disabled = true;
    text("sweep-status", "");
    state.images.clear();
    state.history = [];
    state.sliceMax = 0;
    drawPlot();
  }

  function onCounters(c) {
    text("scan-id", c.scan);
    if (c.state === "open") badge("scan-state", "open", "ok");
    else if (c.state === "reconstructing") badge("scan-state", "reconstructing", "warn");
    for (const key of KEYS) {
      text(`expected-${key}`, c.expected[key]);
      text(`received-${key}`, c.received[key]);
      text(`missing-${key}`, c.missing ? c.missing[key] : "–");
    }
    const missing = c.missing ? KEYS.reduce((sum, key) => sum + c.missing[key], 0) : null;
    text("count-missing", missing);
    $("count-missing").className = missing ? "alert" : "";
    text("count-rejected", c.rejected);
    $("count-rejected").className = c.rejected ? "alert" : "";
    text("count-duplicate", c.duplicate);
    text("count-processed", c.processed);
    text("count-previewed", c.previewed);
    const dropped = c.dropped;
    // What the feed could not keep (memory budget); superseded previews are normal.
    text("count-dropped", dropped.preview_rows + dropped.slices);
    $("count-dropped").title = `projections left out of the preview ${dropped.preview_rows}, `
      + `slices not kept ${dropped.slices}, previews superseded by newer ones `
      + `${dropped.previews}, sends refused ${dropped.messages}`;
    const expected = c.expected.projections || 1;
    $("progress-bar").style.width = `${Math.min(100, 100 * c.received.projections / expected)}%`;
    text("progress-text", `${c.received.projections} / ${c.expected.projections} projections `
      + `in ${c.elapsed_s.toFixed(1)} s`);
    const r = c.rates;
    text("rates", `received ${r.received_fps.toFixed(1)} f/s · corrected `
      + `${r.processed_fps.toFixed(1)} f/s · preview ${r.previewed_fps.toFixed(1)} f/s`);
    setCenter(c.center, c.center_method);
  }

  function onScanEnd(e) {
    for (const key of KEYS) {
      text(`received-${key}`, e.received[key]);
      text(`missing-${key}`, e.missing[key]);
    }
    const missing = KEYS.reduce((sum, key) => sum + e.missing[key], 0);
    text("count-missing", missing);
    $("count-missing").className = missing ? "alert" : "";
    text("count-rejected", e.rejected);
    text("count-duplicate", e.duplicate);
    badge("scan-state", e.status, e.complete ? "ok" : "bad");
    setCenter(e.center, e.center_method);
    const where = e.output ? `volume: ${e.output}` : (e.error || "no volume");
    text("scan-result", `${e.complete ? "complete" : "INCOMPLETE"} (${e.close_reason}); ${where}`);
    $("scan-result").className = e.complete ? "" : "alert";
  }

  function onPreview(meta, images) {
    const holder = $("previews");
    images.forEach((image, i) => {
      let canvas = $(`preview-${i}`);
      if (!canvas) {
        const figure = document.createElement("figure");
        canvas = document.createElement("canvas");
        canvas.id = `preview-${i}`;
        canvas.className = "image";
        const caption = document.createElement("figcaption");
        caption.id = `preview-caption-${i}`;
        figure.append(canvas, caption);
        holder.append(figure);
      }
      draw(canvas, image);
      canvas.dataset.projections = String(meta.projections);
      text(`preview-caption-${i}`, `row ${meta.rows[i]}`);
    });
    setRows(meta.rows);
    const method = meta.center_method ? ` (${meta.center_method})` : "";
    text("preview-info", `${meta.projections} / ${meta.expected} projections, CoR `
      + `${meta.center.toFixed(2)}${method}, binning ${meta.binning}`
      + stageText(meta.stage, meta.not_applied));
  }

  // How far the previewed projections are corrected, and the steps the preview lacks
  // (R ranks run a halo step and those after it on their bands, after the exchange).
  function stageText(stage, notApplied) {
    if (!stage) return "";
    const missing = notApplied && notApplied.length
      ? `; not in the preview: ${notApplied.join(", ")}` : "";
    return `, frames ${stage}${missing}`;
  }

  function onSlice(meta, images) {
    draw($("slice-canvas"), images[0]);
    $("slice-canvas").dataset.index = String(meta.index);
    $("slice-canvas").dataset.scan = meta.scan;
    state.sliceMax = Math.max(state.sliceMax, meta.band[1] - 1);
    $("slice-index").max = String(state.sliceMax);
    $("slice-number").max = String(state.sliceMax);
    if (!meta.requested) {
      $("slice-index").value = String(meta.index);
      $("slice-number").value = String(meta.index);
    }
    const method = meta.center_method ? ` (${meta.center_method})` : "";
    const center = meta.center === null || meta.center === undefined ? ""
      : `, CoR ${meta.center.toFixed(2)}${method}`;
    text("slice-info", `slice ${meta.index} of 0…${state.sliceMax}${center}`);
  }

  function onCuts(meta, images) {
    const [xy, xz, yz] = images;
    draw($("cut-xy"), xy);
    draw($("cut-xz"), xz);
    draw($("cut-yz"), yz);
    for (const id of ["cut-xy", "cut-xz", "cut-yz"]) $(id).dataset.scan = meta.scan;
    // xz and yz: one row per kept slice, slice_stride detector rows apart.
    const aspect = meta.slice_stride / meta.binning;
    for (const [id, image] of [["cut-xz", xz], ["cut-yz", yz]]) {
      $(id).style.height = `${240 * image.height * aspect / image.width}px`;
    }
    text("cuts-info", `through slice ${meta.index}`);
  }

  function onSweep(meta, images) {
    const grid = $("sweep-grid");
    grid.replaceChildren();
    images.forEach((image, i) => {
      const center = meta.centers[i];
      const figure = document.createElement("figure");
      figure.className = "sweep-item";
      figure.dataset.center = String(center);
      const canvas = document.createElement("canvas");
      canvas.id = `sweep-${i}`;
      canvas.className = "image";
      const caption = document.createElement("figcaption");
      caption.textContent = `CoR ${center.toFixed(2)}`;
      figure.append(canvas, caption);
      figure.addEventListener("click", () => choose(figure, center));
      grid.append(figure);
      draw(canvas, image);
    });
    text("sweep-status", `row ${meta.row}, ${meta.angles_used} projections: click the sharpest`);
  }

  function choose(figure, center) {
    for (const item of document.querySelectorAll(".sweep-item")) item.classList.remove("chosen");
    figure.classList.add("chosen");
    state.chosen = center;
    text("sweep-chosen", center.toFixed(2));
    $("sweep-apply").disabled = !state.control;
  }

  function onReply(reply) {
    if (reply.op === "cor_sweep") {
      text("sweep-status", reply.ok
        ? `computing ${reply.centers.length} centres on row ${reply.row} …`
        : `sweep refused: ${reply.message}`);
    } else if (reply.op === "set_center") {
      text("sweep-status", reply.ok
        ? `CoR ${Number(reply.center).toFixed(2)} is used for the rest of scan ${reply.scan}`
        : `not applied: ${reply.message}`);
      if (reply.ok) setCenter(reply.center, "user (viewer)");
    } else if (!reply.ok) {
      text("slice-info", `refused: ${reply.message}`);
    }
    $("sweep-status").className = reply.ok ? "" : "alert";
  }

  function onText(message) {
    switch (message.kind) {
      case "hello":
        state.control = message.control;
        $("sweep-request").disabled = !message.control;
        $("slice-get").disabled = !message.control;
        break;
      case "state":
        text("scan-id", message.scan);
        setCenter(message.center, message.center_method);
        if (message.preview_rows) setRows(message.preview_rows);
        if (message.counters) onCounters(message.counters);
        break;
      case "scan_start": onScanStart(message); break;
      case "counters": onCounters(message); break;
      case "scan_end": onScanEnd(message); break;
      case "history": state.history = message.points; drawPlot(); break;
      case "point":
        state.history.push(message);
        if (state.history.length > 900) state.history.shift();
        drawPlot();
        break;
      case "reply": onReply(message); break;
      default: break;
    }
  }

  function onBinary(buffer) {
    const { meta, images } = parseFrame(buffer);
    if (meta.kind === "preview") onPreview(meta, images);
    else if (meta.kind === "slice") onSlice(meta, images);
    else if (meta.kind === "cuts") onCuts(meta, images);
    else if (meta.kind === "cor_sweep") onSweep(meta, images);
  }

  // --- rate plot ------------------------------------------------------------------------

  const SERIES = [["received_fps", "#3d8bd9", "received"], ["processed_fps", "#43a047", "corrected"],
                  ["previewed_fps", "#ffb300", "preview"]];

  function drawPlot() {
    const canvas = $("rate-plot");
    const context = canvas.getContext("2d");
    const { width, height } = canvas;
    context.clearRect(0, 0, width, height);
    const points = state.history;
    const left = 44, bottom = height - 18, top = 8, right = width - 8;
    let peak = 1;
    for (const p of points) for (const [key] of SERIES) peak = Math.max(peak, p[key]);
    const t0 = points.length ? points[0].elapsed_s : 0;
    const t1 = points.length ? Math.max(points[points.length - 1].elapsed_s, t0 + 1) : 1;
    context.strokeStyle = "#444";
    context.fillStyle = "#9aa0a6";
    context.font = "11px sans-serif";
    context.strokeRect(left, top, right - left, bottom - top);
    context.fillText(`${peak.toFixed(0)} f/s`, 2, top + 10);
    context.fillText("0", 30, bottom);
    context.fillText(`${(t1 - t0).toFixed(0)} s`, right - 30, height - 4);
    SERIES.forEach(([key, colour, label], n) => {
      context.strokeStyle = colour;
      context.beginPath();
      points.forEach((p, i) => {
        const x = left + (right - left) * (p.elapsed_s - t0) / (t1 - t0);
        const y = bottom - (bottom - top) * p[key] / peak;
        if (i === 0) context.moveTo(x, y); else context.lineTo(x, y);
      });
      context.stroke();
      context.fillStyle = colour;
      context.fillText(label, left + 8 + n * 80, height - 4);
    });
  }

  // --- controls -------------------------------------------------------------------------

  function send(op) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(op));
  }

  function number(id) { return parseFloat($(id).value); }

  $("sweep-request").addEventListener("click", () => {
    const row = $("sweep-row").value;
    send({ op: "cor_sweep", half_width: number("sweep-half"), step: number("sweep-step"),
           row: row === "" ? null : Number(row) });
    text("sweep-status", "requested …");
    $("sweep-status").className = "";
  });
  $("sweep-apply").addEventListener("click", () => {
    if (state.chosen !== null) send({ op: "set_center", value: state.chosen });
  });
  const askSlice = (value) => send({ op: "slice", index: Math.max(0, Math.round(Number(value))) });
  $("slice-get").addEventListener("click", () => askSlice($("slice-number").value));
  $("slice-index").addEventListener("change", (event) => {
    $("slice-number").value = event.target.value;
    askSlice(event.target.value);
  });
  for (const id of ["pct-low", "pct-high", "win-min", "win-max"]) {
    $(id).addEventListener("change", redrawAll);
  }
  for (const radio of document.querySelectorAll("input[name=contrast]")) {
    radio.addEventListener("change", redrawAll);
  }

  // --- connection -----------------------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/ws`);
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    ws.addEventListener("open", () => badge("connection", "live", "ok"));
    ws.addEventListener("message", (event) => {
      if (typeof event.data === "string") onText(JSON.parse(event.data));
      else onBinary(event.data);
    });
    ws.addEventListener("close", () => {
      badge("connection", "disconnected", "bad");
      setTimeout(connect, 1000);
    });
  }

  drawPlot();
  connect();
})();
