// The service's page: plain JavaScript, no build step. Every request goes to the JSON API.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 500; // the class table shows at most this many rows (use the filter)
let classes = [];
let pending = []; // pictures waiting to be added to a class: File objects
let stream = null;
let snapCount = 0;
let calibrated = false; // whether the service has calibration scores (prediction sets), from /health

function status(message, ok) {
  const el = $("status");
  el.textContent = message;
  el.className = ok ? "ok" : "error";
}

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(method, path, body) {
  const res = await fetch(path, { method, body, headers: method === "GET" ? {} : authHeaders() });
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    if (res.status === 401) { $("token-section").hidden = false; $("token").focus(); }
    throw new Error((data && data.detail) || `${res.status} ${res.statusText}`);
  }
  return data;
}

function element(tag, text, cls) {
  const el = document.createElement(tag);
  if (text !== undefined) el.textContent = text;
  if (cls) el.className = cls;
  return el;
}

function thumbnail(file) {
  const img = element("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name;
  img.onload = () => URL.revokeObjectURL(img.src);
  return img;
}

// -- classes ------------------------------------------------------------------
async function loadClasses() {
  const data = await api("GET", "/classes");
  classes = data.classes;
  renderClasses();
}

function renderClasses() {
  const filter = $("class-filter").value.trim().toLowerCase();
  const shown = classes.filter((c) => c.name.toLowerCase().includes(filter));
  const body = $("classes").tBodies[0];
  body.replaceChildren();
  for (const c of shown.slice(0, MAX_ROWS)) {
    const row = element("tr");
    row.dataset.name = c.name;
    row.append(element("td", c.name), element("td", c.kind), element("td", String(c.examples)));
    const cell = element("td");
    if (c.source === "store") {
      const ex = element("button", openExamples === c.name ? "Hide examples" : "Examples", "examples");
      ex.type = "button";
      ex.onclick = () => toggleExamples(c.name);
      const del = element("button", "Delete");
      del.type = "button";
      del.className = "delete";
      del.onclick = () => deleteClass(c.name);
      cell.append(ex, del);
    }
    row.append(cell);
    body.append(row);
    if (openExamples === c.name) body.append(examplesRow(c.name));
  }
  $("class-count").textContent = shown.length > MAX_ROWS
    ? `showing ${MAX_ROWS} of ${shown.length} (filter to find others)`
    : `${shown.length} of ${classes.length} classes`;
  const list = $("class-list");
  list.replaceChildren(...classes.filter((c) => c.source === "store").slice(0, MAX_ROWS)
    .map((c) => { const o = element("option"); o.value = c.name; return o; }));
}

async function deleteClass(name) {
  if (!confirm(`Delete the class "${name}" and its examples?`)) return;
  try {
    await api("DELETE", "/classes/" + encodeURIComponent(name));
    status(`Deleted "${name}".`, true);
    await loadClasses();
  } catch (e) { status(`Could not delete "${name}": ${e.message}`); }
}

// -- a class's examples: thumbnails, remove one, rename the class ---------------
let openExamples = null; // the class whose examples are shown
let exampleList = [];

async function toggleExamples(name) {
  if (openExamples === name) { openExamples = null; renderClasses(); return; }
  try {
    exampleList = (await api("GET", "/classes/" + encodeURIComponent(name) + "/examples")).examples;
    openExamples = name;
    renderClasses();
  } catch (e) { status(`Could not list the examples of "${name}": ${e.message}`); }
}

function examplesRow(name) {
  const row = element("tr", undefined, "examples-row");
  row.dataset.for = name;
  const cell = element("td");
  cell.colSpan = 4;
  const rename = element("p");
  const input = element("input", undefined, "rename-input");
  input.value = name;
  input.maxLength = 100;
  input.setAttribute("aria-label", "New name");
  const save = element("button", "Rename", "rename");
  save.type = "button";
  save.onclick = () => renameClass(name, input.value.trim());
  rename.append("New name ", input, " ", save);
  const grid = element("div", undefined, "thumbs examples");
  for (const ex of exampleList) {
    const fig = element("figure", undefined, "example");
    fig.dataset.id = String(ex.id);
    if (ex.thumbnail) {
      const img = element("img");
      img.src = ex.thumbnail;
      img.alt = ex.filename;
      fig.append(img);
    } else fig.append(element("span", "(no thumbnail)", "muted"));
    const cap = element("figcaption", `${ex.filename} · ${ex.added.replace("T", " ").slice(0, 16)}`);
    const rm = element("button", "Remove", "remove-example");
    rm.type = "button";
    rm.onclick = () => removeExample(name, ex);
    fig.append(cap);
    if (ex.looks_like) {  // taught as this class, but the others of its class say another
      fig.classList.add("suspect");
      fig.append(element("p", `looks like "${ex.looks_like.class}" (p ${ex.looks_like.probability.toFixed(2)})`, "looks-like"));
    }
    fig.append(rm);
    grid.append(fig);
  }
  cell.append(rename, grid);
  row.append(cell);
  return row;
}

async function removeExample(name, ex) {
  if (!confirm(`Remove ${ex.filename} from "${name}"?`)) return;
  try {
    const r = await api("DELETE", `/classes/${encodeURIComponent(name)}/examples/${ex.id}`);
    if (r.class_deleted) { openExamples = null; status(`Removed the last example: "${name}" is gone.`, true); }
    else {
      exampleList = exampleList.filter((e) => e.id !== ex.id);
      status(`Removed ${ex.filename}: "${name}" has ${r.examples} examples.`, true);
    }
    await loadClasses();
  } catch (e) { status(`Could not remove the example: ${e.message}`); }
}

async function renameClass(name, newName) {
  if (!newName || newName === name) { status("Type a new name first."); return; }
  const form = JSON.stringify({ new_name: newName });
  try {
    const res = await fetch("/classes/" + encodeURIComponent(name) + "/rename", {
      method: "POST", body: form, headers: { ...authHeaders(), "Content-Type": "application/json" } });
    const data = await res.json().catch(() => null);
    if (!res.ok) {
      if (res.status === 401) { $("token-section").hidden = false; $("token").focus(); }
      throw new Error((data && data.detail) || `${res.status} ${res.statusText}`);
    }
    openExamples = newName;
    status(`Renamed "${name}" to "${newName}".`, true);
    await loadClasses();
  } catch (e) { status(`Could not rename "${name}": ${e.message}`); }
}

async function calibrateModel() {
  try {
    const r = await api("POST", "/calibrate");
    const pct = (x) => (100 * x).toFixed(0) + " %";
    let thr = `; no "unknown" threshold (${r.note || "not enough examples"})`;
    if (r.unknown_threshold !== null) {
      thr = `; "unknown" below cosine ${r.unknown_threshold.toFixed(3)}`;
      if (r.target_false_reject !== null) {
        thr += ` (at most ${pct(r.target_false_reject)} of taught pictures called unknown`
          + (r.false_accept === null ? ")" : `; about ${pct(r.false_accept)} of never-taught ones let through)`);
      }
      if (!r.unknown_threshold_applied) thr += `, not applied: the server's own threshold stays`;
    }
    status(`Calibrated on ${r.calibration_examples} pictures: scale ${r.scale_before.toFixed(1)} -> ${r.scale.toFixed(1)}${thr}.`, true);
    await showModel();
  } catch (e) { status(`Could not calibrate: ${e.message}`); }
}

async function showModel() {
  const h = await api("GET", "/health");
  calibrated = Boolean(h.calibration && h.calibration.calibrated);
  $("model-info").textContent = `Model: ${h.backbone}, ${h.embedding_dim}-d embeddings, ${h.image_size} px.`
    + (h.unknown_threshold === null ? "" : ` "unknown" below cosine ${h.unknown_threshold.toFixed(3)}.`)
    + (calibrated && h.calibration.stale ? " Classes changed since the last calibration: calibrate again." : "");
  return h;
}

// -- teaching -----------------------------------------------------------------
function renderPending() {
  $("teach-pending").replaceChildren(...pending.map(thumbnail));
}

async function teach() {
  const name = $("class-name").value.trim();
  if (!name) { status("Type a class name first."); return; }
  if (!pending.length) { status("Choose pictures (or take some with the camera) first."); return; }
  const form = new FormData();
  for (const f of pending) form.append("files", f, f.name);
  $("teach-btn").disabled = true;
  try {
    const r = await api("POST", "/classes/" + encodeURIComponent(name) + "/examples", form);
    status(`"${r.name}" ${r.created ? "created" : "updated"}: ${r.examples} examples (${r.added} added in ${r.seconds.toFixed(2)} s).`, true);
    pending = [];
    $("teach-files").value = "";
    renderPending();
    await loadClasses();
  } catch (e) { status(`Could not teach "${name}": ${e.message}`); }
  finally { $("teach-btn").disabled = false; }
}

// -- predicting ---------------------------------------------------------------
async function predict(files) {
  if (!files.length) { status("Choose a picture first."); return; }
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  const k = Math.max(1, Math.min(100, parseInt($("top-k").value, 10) || 5));
  const coverage = calibrated ? $("coverage").value : "";  // sets need a calibration
  try {
    const r = await api("POST", `/predict?k=${k}` + (coverage ? `&coverage=${coverage}` : ""), form);
    const out = $("predictions");
    out.replaceChildren();
    r.predictions.forEach((p, i) => {
      const box = element("div", undefined, "result");
      box.append(thumbnail(files[i]));
      const best = p.top[0];
      const pct = (100 * best.probability).toFixed(1) + "%";
      const verdict = p.unknown
        ? element("p", `unknown (closest: ${best.class}, ${pct})`, "verdict unknown")
        : element("p", `${best.class}: ${pct}`, "verdict");
      const table = element("table");
      table.createCaption().textContent = p.file;
      if (p.unknown) table.caption.append(" ", element("span", "unknown", "unknown"));
      const head = table.createTHead().insertRow();
      for (const h of ["#", "Class", "Probability", "Cosine"]) head.append(element("th", h));
      const body = table.createTBody();
      p.top.forEach((t, rank) => {
        const row = body.insertRow();
        row.append(element("td", String(rank + 1)), element("td", t.class, "class"),
          element("td", (100 * t.probability).toFixed(1) + "%"), element("td", t.cosine.toFixed(3)));
      });
      const right = element("div");
      right.append(verdict);
      if (p.set) {
        const share = (100 * r.coverage).toFixed(0) + " %";
        right.append(p.set.length
          ? element("p", `Could be (${share} sets): ${p.set.join(", ")}`, "set")
          : element("p", `Not one of my classes (an empty ${share} set)`, "set none"));
      }
      right.append(table);
      box.append(right);
      out.append(box);
    });
    status(`Predicted ${r.predictions.length} picture(s) in ${r.seconds.toFixed(2)} s.`, true);
  } catch (e) { status(`Could not predict: ${e.message}`); }
}

// -- camera -------------------------------------------------------------------
async function startCamera() {
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  } catch (e) { status(`The camera is not available: ${e.message}`); return; }
  const video = $("camera-video");
  video.onloadedmetadata = () => { document.body.dataset.camera = "ready"; };
  video.srcObject = stream;
  video.hidden = false;
  $("camera-start").hidden = true;
  $("camera-stop").hidden = false;
  $("snap-teach").disabled = $("snap-predict").disabled = false;
}

function stopCamera() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  delete document.body.dataset.camera;
  $("camera-video").hidden = true;
  $("camera-start").hidden = false;
  $("camera-stop").hidden = true;
  $("snap-teach").disabled = $("snap-predict").disabled = true;
}

function snap() {
  const video = $("camera-video");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  return new Promise((resolve, reject) => canvas.toBlob((blob) => {
    if (!blob) { reject(new Error("no picture from the camera yet")); return; }
    snapCount += 1;
    resolve(new File([blob], `camera-${snapCount}.jpg`, { type: "image/jpeg" }));
  }, "image/jpeg", 0.92));
}

// -- start ----------------------------------------------------------------------
async function start() {
  $("token").value = sessionStorage.getItem("imprint-token") || "";
  $("token").onchange = () => sessionStorage.setItem("imprint-token", $("token").value.trim());
  $("teach-files").onchange = () => { pending = pending.concat(Array.from($("teach-files").files)); renderPending(); };
  $("teach-btn").onclick = teach;
  $("predict-btn").onclick = () => predict(Array.from($("predict-files").files));
  $("class-filter").oninput = renderClasses;
  $("calibrate-btn").onclick = calibrateModel;
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    $("camera-section").hidden = false;
    $("camera-start").onclick = startCamera;
    $("camera-stop").onclick = stopCamera;
    $("snap-teach").onclick = async () => {
      try { pending.push(await snap()); renderPending(); status("Picture taken: add it to a class.", true); }
      catch (e) { status(e.message); }
    };
    $("snap-predict").onclick = async () => {
      try { await predict([await snap()]); } catch (e) { status(e.message); }
    };
  }
  try {
    const h = await showModel();
    if (h.writes_need_token) $("token-section").hidden = false;
    await loadClasses();
    document.body.dataset.ready = "1";
  } catch (e) { status(`The service does not answer: ${e.message}`); }
}

start();
