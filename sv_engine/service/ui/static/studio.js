// sv-engine studio: StableVideo's interactive workflow on the render service's own job API.
// Every request goes to this server with the bearer token (when the service has one); images and
// videos are fetched with it and shown through blob: URLs, so no URL ever carries the token.
"use strict";

const $ = (id) => document.getElementById(id);
const EDIT_KNOBS = ["strength", "steps", "cfg", "control_scale", "seed", "image_resolution", "depth_resolution",
  "canny_low", "canny_high", "aggregation", "edit_background"];
const EXTRA_PROMPTS = ["fg_added_prompt", "fg_negative_prompt", "bg_added_prompt", "bg_negative_prompt"];

const state = {
  token: sessionStorage.getItem("sv-token") || "",
  clips: [], clip: null, keyframes: [],
  jobs: new Map(), current: null, shown: new Set(), renderJob: null,
  atlasJob: {}, // clip name -> its atlas job id
  blobs: new Map(), // element id -> object URL (revoked when replaced)
};

// ---- requests -------------------------------------------------------------------------------
class ApiError extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $("token-form").hidden = false;
    throw new ApiError("this service needs its bearer token: enter it above");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try { const body = await response.json(); detail = body.detail + (body.fix ? ` (${body.fix})` : ""); } catch (e) { /* not JSON */ }
    throw new ApiError(`${response.status}: ${detail}`);
  }
  return response;
}

const getJson = async (path) => (await api(path)).json();
const postJson = async (path, json) => (await api(path, { method: "POST", json })).json();

function say(text, error = false) {
  $("message").textContent = text || "";
  $("message").classList.toggle("error", error);
}

function guard(fn) {
  return async (...args) => {
    try { await fn(...args); } catch (err) { say(err.message, true); if (!(err instanceof ApiError)) console.error(err); }
  };
}

// Shows `path` (fetched with the token) in the element `id` (img, video or a download link).
async function showBlob(id, path) {
  const blob = await (await api(path)).blob();
  const url = URL.createObjectURL(blob);
  const el = $(id);
  if (state.blobs.has(id)) URL.revokeObjectURL(state.blobs.get(id));
  state.blobs.set(id, url);
  if (el.tagName === "A") { el.href = url; el.hidden = false; } else { el.src = url; }
  return el;
}

function loaded(img) {
  return img.complete && img.naturalWidth ? Promise.resolve(img) :
    new Promise((resolve, reject) => { img.onload = () => resolve(img); img.onerror = reject; });
}

// ---- clips and the timeline ---------------------------------------------------------------------
async function loadClips() {
  const body = await getJson("/clips");
  state.clips = body.clips;
  const box = $("clips");
  box.replaceChildren();
  for (const clip of state.clips) {
    const card = document.createElement("button");
    card.type = "button";
    card.className = "card";
    card.dataset.clip = clip.name;
    const img = document.createElement("img");
    img.id = `thumb-${clip.name}`;
    img.alt = clip.name;
    const text = document.createElement("div");
    text.textContent = `${clip.name} · ${clip.frames} frames · ${clip.width}×${clip.height}`;
    card.append(img, text);
    card.onclick = guard(() => selectClip(clip.name));
    box.append(card);
    showBlob(img.id, `/clips/${encodeURIComponent(clip.name)}/frames/0`).catch(() => {});
  }
  if (!state.clip && state.clips.length) await selectClip(state.clips[0].name);
}

async function selectClip(name) {
  const clip = state.clips.find((c) => c.name === name);
  state.clip = clip;
  for (const card of document.querySelectorAll(".card")) card.classList.toggle("selected", card.dataset.clip === name);
  $("clip-title").textContent = `· ${name}`;
  $("frame-slider").max = clip.frames - 1;
  $("frame-slider").value = 0;
  setKeyframes(clip.default_keyframes);
  await showFrame(0);
  // The atlases come from the warm workers (an atlas job; the video stays open there for the edit).
  if (!state.atlasJob[name]) state.atlasJob[name] = (await postJson("/jobs/atlas", { data: name })).id;
  await refreshJobs();
}

async function showFrame(index) {
  $("frame-index").textContent = index;
  await showBlob("frame-view", `/clips/${encodeURIComponent(state.clip.name)}/frames/${index}`);
}

function setKeyframes(list) {
  const frames = state.clip ? state.clip.frames : 1;
  state.keyframes = [...new Set(list.filter((k) => Number.isInteger(k) && k >= 0 && k < frames))].sort((a, b) => a - b);
  $("keyframes").value = state.keyframes.join(",");
  const marks = $("keyframe-marks");
  marks.replaceChildren();
  for (const k of state.keyframes) {
    const mark = document.createElement("button");
    mark.type = "button";
    mark.className = "mark";
    mark.title = `keyframe ${k} (click: go there)`;
    mark.style.left = `${frames > 1 ? (100 * k) / (frames - 1) : 0}%`;
    mark.onclick = guard(async () => { $("frame-slider").value = k; await showFrame(k); });
    marks.append(mark);
  }
}

// ---- edit ---------------------------------------------------------------------------------------
async function loadDefaults() {
  const schema = await (await fetch("/openapi.json")).json();
  const props = schema.components.schemas.JobSpec.properties;
  for (const knob of EDIT_KNOBS) {
    const el = $(knob);
    if (el.type === "checkbox") el.checked = Boolean(props[knob].default);
    else el.value = props[knob].default;
  }
}

function editSpec() {
  const spec = { data: state.clip.name, fg_prompt: $("fg_prompt").value, bg_prompt: $("bg_prompt").value };
  if (state.keyframes.length) spec.keyframes = state.keyframes;
  for (const knob of EDIT_KNOBS) {
    const el = $(knob);
    spec[knob] = el.type === "checkbox" ? el.checked : el.tagName === "SELECT" ? el.value : Number(el.value);
  }
  for (const extra of EXTRA_PROMPTS) if ($(extra).value.trim()) spec[extra] = $(extra).value;
  return spec;
}

async function submitEdit(spec) {
  const job = await postJson("/jobs", spec);
  say(`edit ${job.id.slice(0, 8)} queued`);
  openJob(job);
  await refreshJobs();
}

// ---- the current job ------------------------------------------------------------------------------
function openJob(job) {
  state.current = job.id;
  state.shown = new Set();
  $("job-title").textContent = `· ${job.kind} ${job.id.slice(0, 8)}`;
  $("keyframe-gallery").replaceChildren();
  for (const id of ["fg-edited", "bg-edited", "result-video", "mask-base"]) $(id).removeAttribute("src");
  for (const id of ["download-video", "download-preview"]) $(id).hidden = true;
  $("rerender").disabled = true;
  updateCurrent(job);
}

async function updateCurrent(job) {
  $("job-status").textContent = job.status + (job.error ? `: ${job.error}` : "");
  $("job-stage").textContent = job.stage ? `· ${job.stage}` : "";
  $("job-progress").value = job.progress;
  const base = `/jobs/${job.id}`;
  for (const name of job.files || []) {
    if (state.shown.has(name)) continue;
    state.shown.add(name);
    const match = name.match(/^keyframe_(\d+)\.png$/);
    if (match) {
      const figure = document.createElement("figure");
      const img = document.createElement("img");
      img.id = `keyframe-${match[1]}`;
      img.alt = `keyframe ${match[1]}`;
      const caption = document.createElement("figcaption");
      const frame = (job.keyframes || job.spec.keyframes || [])[Number(match[1])];
      caption.textContent = `keyframe ${match[1]}${frame === undefined ? "" : ` · frame ${frame}`}`;
      figure.append(img, caption);
      $("keyframe-gallery").append(figure);
      await showBlob(img.id, `${base}/files/${name}`);
    } else if (name === "fg_atlas_edited.png") {
      await showBlob("fg-edited", `${base}/files/${name}`);
    } else if (name === "bg_atlas_edited.png") {
      await showBlob("bg-edited", `${base}/files/${name}`);
    }
  }
  if (job.status === "done" && job.kind === "edit" && !state.shown.has("video")) {
    state.shown.add("video");
    if (!$("message").classList.contains("error")) say(`edit ${job.id.slice(0, 8)} done in ${job.seconds} s`);
    await Promise.all([
      showBlob("result-video", job.video), showBlob("download-video", job.video),
      showBlob("download-preview", job.preview),
    ]);
    $("download-video").download = `${job.id}_edit.mp4`;
    $("download-preview").download = `${job.id}_preview.png`;
    await startMask(job);
  }
}

// Atlas jobs fill the Look panel; fit jobs add a clip when done.
async function updateSideJobs(job) {
  if (job.kind === "atlas" && job.status === "done" && state.clip && state.atlasJob[state.clip.name] === job.id
      && !state.shown.has(`atlas-${job.id}`)) {
    state.shown.add(`atlas-${job.id}`);
    await showBlob("fg-atlas", `/jobs/${job.id}/files/fg_atlas.png`);
    await showBlob("bg-atlas", `/jobs/${job.id}/files/bg_atlas.png`);
  }
  if (job.kind === "fit" && job.status === "done" && !state.shown.has(`fit-${job.id}`)) {
    state.shown.add(`fit-${job.id}`);
    await loadClips();
  }
  if (job.kind === "render" && job.id === state.renderJob) {
    $("render-status").textContent = `${job.status}${job.stage ? " · " + job.stage : ""}${job.error ? ": " + job.error : ""}`;
    if (job.status === "done" && !state.shown.has(`render-${job.id}`)) {
      state.shown.add(`render-${job.id}`);
      await showBlob("render-video", job.video);
      await showBlob("download-render", job.video);
      $("download-render").download = `${job.id}_render.mp4`;
    }
  }
}

// ---- keep-mask ------------------------------------------------------------------------------------
const mask = { drawing: false, last: null, original: null };

async function startMask(job) {
  const base = await loaded(await showBlob("mask-base", `/jobs/${job.id}/files/fg_atlas_edited.png`));
  mask.original = await loaded(await showBlob("fg-atlas-original", `/jobs/${job.id}/files/fg_atlas.png`));
  const canvas = $("mask-canvas");
  canvas.width = base.naturalWidth;
  canvas.height = base.naturalHeight;
  clearMask();
  $("rerender").disabled = false;
}

function clearMask() {
  const canvas = $("mask-canvas");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  updateKeptPreview();
}

function canvasPoint(event) {
  const canvas = $("mask-canvas");
  const rect = canvas.getBoundingClientRect();
  return [(event.clientX - rect.left) * canvas.width / rect.width, (event.clientY - rect.top) * canvas.height / rect.height];
}

function paint(event) {
  if (!mask.drawing) return;
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d");
  const point = canvasPoint(event);
  const scale = canvas.width / canvas.getBoundingClientRect().width;
  ctx.strokeStyle = ctx.fillStyle = "#fff";
  ctx.lineCap = "round";
  ctx.lineWidth = Number($("brush").value) * scale;
  ctx.beginPath();
  ctx.moveTo(...(mask.last || point));
  ctx.lineTo(...point);
  ctx.stroke();
  mask.last = point;
}

// What the render will use: the edited atlas, the original one where painted.
function updateKeptPreview() {
  const base = $("mask-base"), source = $("mask-canvas"), out = $("kept-preview");
  if (!base.naturalWidth) return;
  out.width = base.naturalWidth;
  out.height = base.naturalHeight;
  const ctx = out.getContext("2d");
  ctx.drawImage(base, 0, 0);
  if (!mask.original) return;
  const layer = document.createElement("canvas");
  layer.width = out.width;
  layer.height = out.height;
  const lctx = layer.getContext("2d");
  lctx.drawImage(source, 0, 0);
  lctx.globalCompositeOperation = "source-in";
  lctx.drawImage(mask.original, 0, 0);
  ctx.drawImage(layer, 0, 0);
}

function maskPng() {
  const source = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = source.width;
  out.height = source.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.drawImage(source, 0, 0);
  return out.toDataURL("image/png");
}

async function rerender() {
  const edit = state.jobs.get(state.current);
  const job = await postJson("/jobs/render", { data: edit.data, atlases_from: edit.id, mask_png: maskPng() });
  state.renderJob = job.id;
  $("render-status").textContent = "queued";
  await refreshJobs();
}

// ---- the job list ---------------------------------------------------------------------------------
function actionButton(label, className, fn) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.className = className;
  button.onclick = guard(fn);
  return button;
}

async function refreshJobs() {
  const { jobs } = await getJson("/jobs");
  state.jobs = new Map(jobs.map((j) => [j.id, j]));
  const rows = [];
  for (const job of [...jobs].reverse()) {
    const row = document.createElement("tr");
    row.dataset.job = job.id;
    row.className = job.id === state.current ? "current" : "";
    for (const text of [job.id.slice(0, 8), job.kind, job.data, job.status + (job.stage ? ` · ${job.stage}` : ""),
      `${Math.round(100 * job.progress)}%`]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    const actions = document.createElement("td");
    if (job.kind === "edit") actions.append(actionButton("open", "open", () => openJob(job)));
    if (job.status === "queued" || job.status === "running") {
      actions.append(actionButton("cancel", "cancel", async () => {
        await api(`/jobs/${job.id}`, { method: "DELETE" });
        await refreshJobs();
      }));
    }
    if (job.kind === "edit") {
      actions.append(actionButton("again, new seed", "again", () => submitEdit(Object.assign({}, job.spec, { seed: -1 }))));
    }
    row.append(actions);
    rows.push(row);
  }
  document.querySelector("#jobs tbody").replaceChildren(...rows);
  for (const job of jobs) await updateSideJobs(job);
  if (state.current && state.jobs.has(state.current)) await updateCurrent(state.jobs.get(state.current));
}

async function refreshHealth() {
  const health = await (await fetch("/health")).json();
  const badge = $("health");
  badge.textContent = `${health.workers_alive}/${health.workers} workers · ${health.jobs.running} running · ${health.jobs.queued} queued`;
  badge.className = `badge ${health.status === "ok" ? "ok" : "bad"}`;
}

// ---- upload and fit -------------------------------------------------------------------------------
async function uploadAndFit(event) {
  event.preventDefault();
  const file = $("upload-file").files[0];
  const safe = file.name.replace(/[^A-Za-z0-9._-]/g, "_").replace(/^[^A-Za-z0-9]+/, "") || "video.mp4";
  $("upload-progress").hidden = false;
  // XMLHttpRequest, not fetch: it reports upload progress.
  const stored = await new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", `/uploads/${encodeURIComponent(safe)}`);
    if (state.token) xhr.setRequestHeader("Authorization", `Bearer ${state.token}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) $("upload-progress").value = e.loaded / e.total; };
    xhr.onload = () => {
      if (xhr.status === 201) resolve(JSON.parse(xhr.responseText).upload);
      else reject(new ApiError(`upload: ${xhr.status} ${xhr.responseText}`));
    };
    xhr.onerror = () => reject(new ApiError("upload failed"));
    xhr.send(file);
  });
  const spec = { upload: stored, data: $("upload-name").value, frames: Number($("upload-frames").value),
    width: Number($("upload-width").value), height: Number($("upload-height").value),
    minutes: Number($("upload-minutes").value) };
  if ($("upload-iters").value) spec.iters = Number($("upload-iters").value);
  const job = await postJson("/jobs/fit", spec);
  say(`fit ${job.id.slice(0, 8)} queued: ${spec.data} appears under Clips when it is done`);
  await refreshJobs();
}

// ---- wiring ---------------------------------------------------------------------------------------
function wire() {
  const hidden = document.createElement("img");
  hidden.id = "fg-atlas-original";
  hidden.hidden = true;
  document.body.append(hidden);

  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) { state.token = fromHash; sessionStorage.setItem("sv-token", fromHash); history.replaceState(null, "", location.pathname); }
  $("token").value = state.token;
  $("token-form").onsubmit = guard(async (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("sv-token", state.token);
    $("token-form").hidden = true;
    say("");
    await start();
  });
  $("frame-slider").oninput = guard(() => showFrame(Number($("frame-slider").value)));
  $("toggle-keyframe").onclick = () => {
    const k = Number($("frame-slider").value);
    setKeyframes(state.keyframes.includes(k) ? state.keyframes.filter((x) => x !== k) : [...state.keyframes, k]);
  };
  $("default-keyframes").onclick = () => setKeyframes(state.clip.default_keyframes);
  $("keyframes").onchange = () => setKeyframes($("keyframes").value.split(",").map((s) => Number.parseInt(s, 10)));
  $("edit-form").onsubmit = guard(async (e) => { e.preventDefault(); await submitEdit(editSpec()); });
  $("upload-form").onsubmit = guard(uploadAndFit);
  const canvas = $("mask-canvas");
  canvas.onpointerdown = (e) => { mask.drawing = true; mask.last = null; canvas.setPointerCapture(e.pointerId); paint(e); };
  canvas.onpointermove = paint;
  canvas.onpointerup = canvas.onpointercancel = () => { mask.drawing = false; mask.last = null; updateKeptPreview(); };
  $("mask-clear").onclick = clearMask;
  $("rerender").onclick = guard(rerender);
}

async function start() {
  await loadDefaults();
  await loadClips();
}

wire();
guard(start)();
setInterval(guard(refreshHealth), 3000);
guard(refreshHealth)();
let refreshing = false;
setInterval(guard(async () => {
  if (refreshing || !state.clips.length) return;
  refreshing = true;
  try { await refreshJobs(); } finally { refreshing = false; }
}), 1000);
