// The skyreels page: a client of the same HTTP API as everyone else (POST /v1/videos, GET /v1/videos, ...).
// The form's advanced options are built from GET /v1/options, which the service derives from the library's tables.
"use strict";

const $ = (selector, root = document) => root.querySelector(selector);
const MAIN_FIELDS = new Set(["command", "model", "prompt", "seconds", "frames", "aspect", "resolution", "seed", "size"]);
const POLL_MS = 500;
let options = null;       // GET /v1/options
const shown = new Map();  // job id -> its element (queue item or gallery card)
let noted = null;         // the job the "queued ..." note is about: the note goes when it ends

// ------------------------------------------------------------------ the token (when the service has one)

const token = (() => {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("skyreels-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);
  }
  const saved = sessionStorage.getItem("skyreels-token");
  // <video> cannot send a header: a same-site cookie lets it read (the service takes it for GET only).
  if (saved) document.cookie = `skyreels_token=${encodeURIComponent(saved)}; path=/; SameSite=Strict`;
  return saved;
})();

async function api(method, path, body) {
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  if (body && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(body);
  }
  const response = await fetch(path, { method, headers, body });
  const data = (response.headers.get("content-type") || "").includes("json") ? await response.json() : null;
  if (!response.ok) {
    const error = new Error(data && data.error ? data.error.message : `${response.status} ${response.statusText}`);
    error.param = data && data.error ? data.error.param : null;
    error.status = response.status;
    throw error;
  }
  return data;
}

// ------------------------------------------------------------------ the form

function input(name, info) {
  let element;
  if (info.type === "boolean") {
    element = document.createElement("select");
    for (const [value, text] of [["", "default"], ["true", "on"], ["false", "off"]]) element.add(new Option(text, value));
  } else if (info.choices) {
    element = document.createElement("select");
    element.add(new Option(info.default ? `${info.default} (default)` : "default", ""));
    for (const choice of info.choices) if (choice !== info.default) element.add(new Option(choice, choice));
  } else if (info.type === "array" && name === "loras") {
    element = document.createElement("select");
    element.multiple = true;
    for (const lora of options.loras) element.add(new Option(lora, lora));
  } else if (name === "script" || name === "negative_prompt") {
    element = document.createElement("textarea");
    element.placeholder = name === "script" ? "[[shot]]\nprompt = \"...\"\nframes = 97" : "the official list";
  } else {
    element = document.createElement("input");
    element.type = info.type === "integer" || info.type === "number" ? "number" : "text";
    if (info.type === "number") element.step = "any";
    element.placeholder = "default";
  }
  element.name = name;
  const label = document.createElement("label");
  label.dataset.field = name;
  label.title = info.help || "";
  label.append(name.replaceAll("_", " "), element);
  return label;
}

function buildAdvanced() {
  const command = $("#command").value;
  const box = $("#advanced-fields");
  const kept = {};
  for (const element of box.querySelectorAll("[name]")) if (element.value) kept[element.name] = element.value;
  box.replaceChildren();
  const names = [...options.commands[command].filter((n) => n !== "shots"), ...options.run_options, "priority"];
  if (command === "extend") names.push("script");
  for (const name of names) {
    if (MAIN_FIELDS.has(name) || name === "loras" && !options.loras.length) continue;
    const label = input(name, options.fields[name] || { type: "string" });
    if (kept[name] !== undefined) $("[name]", label).value = kept[name];
    box.append(label);
  }
  showUploads();
  fillModels();
}

// Only the files the command takes are offered. A file already chosen stays in sight, marked, when the command
// changes to one that does not take it: it is sent, and the service refuses it, rather than the page dropping it.
function showUploads() {
  const command = $("#command").value;
  for (const label of document.querySelectorAll("[data-upload]")) {
    const taken = options.uploads[command].includes(label.dataset.upload);
    const chosen = $("input", label).files.length > 0;
    label.hidden = !taken && !chosen;
    $(".hint", label).textContent = taken ? "" : `${command} takes none: clear it`;
    $(".clear-file", label).hidden = !chosen;
  }
}

function clearFile(event) {
  const file = $("input", event.target.closest("[data-upload]"));
  file.value = "";
  file.classList.remove("invalid");
  showUploads();
}

function fillModels() {
  const select = $("#model");
  const command = $("#command").value;
  const current = select.value;
  select.replaceChildren(new Option(`default (${options.defaults[command] || "the registry's"})`, ""));
  for (const name of options.models) select.add(new Option(name, name));
  if ([...select.options].some((o) => o.value === current)) select.value = current;
}

function formData() {
  const data = new FormData();
  const form = $("#form");
  const command = $("#command").value;
  data.append("command", command);
  for (const element of form.querySelectorAll("[name]")) {
    if (element.name === "command" || element.closest("[hidden]")) continue;
    if (element.type === "file") {
      if (element.files.length) data.append(element.name, element.files[0]);
    } else if (element.multiple) {
      for (const o of element.selectedOptions) data.append(element.name, o.value);
    } else if (element.value.trim() !== "") {
      data.append(element.name, element.value.trim());
    }
  }
  const length = $("#length").value.trim();
  if (length) data.append($("#length-unit").value, length);
  return data;
}

async function submit(event) {
  event.preventDefault();
  for (const bad of document.querySelectorAll(".invalid")) bad.classList.remove("invalid");
  $("#form-error").textContent = "";
  $("#submit").disabled = true;
  try {
    const job = await api("POST", "/v1/videos", formData());
    $("#note").textContent = `queued ${job.id}: ${job.frames} frames, ${job.size}, seed ${job.seed}`;
    noted = job.id;
    await refresh();
  } catch (error) {
    $("#form-error").textContent = error.message;
    const name = { seconds: "length", frames: "length" }[error.param] || error.param;
    const field = name && ($(`[name="${name}"]`) || $(`#${name}`));
    if (field) {
      field.classList.add("invalid");
      if (field.closest("details")) field.closest("details").open = true;
      field.focus();
    }
  } finally {
    $("#submit").disabled = false;
  }
}

// "Again with changes": the form filled from a finished video's recorded settings.
async function again(job) {
  const settings = await api("GET", `/v1/videos/${job.id}/content?variant=settings`);
  const request = settings.request;
  $("#command").value = job.command;
  buildAdvanced();
  const model = options.models.includes(settings.model.alias) ? settings.model.alias
    : options.models.find((m) => m === job.model) || "";
  $("#model").value = model;
  $("#length-unit").value = "frames";
  $("#length").value = request.frames;
  for (const [name, value] of Object.entries(request)) {
    const element = $(`#form [name="${name}"]`);
    if (!element || value === null || element.type === "file" || name === "negative_prompt") continue;
    element.value = typeof value === "boolean" ? String(value) : value;
  }
  $("#advanced").open = true;
  const files = ["image", "end_image", "video"].filter((n) => request[n]);
  $("#note").textContent = `settings of ${job.id}` + (files.length ? "; choose its input files again" : "");
  noted = null;
  showUploads();
  $("#prompt").focus();
  scrollTo({ top: 0, behavior: "smooth" });
}

// ------------------------------------------------------------------ queue and gallery

function timeLeft(seconds) {
  if (seconds === null || seconds === undefined) return "estimating time left";
  const s = Math.round(seconds);
  return s < 60 ? `about ${s}s left` : `about ${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s left`;
}

function button(text, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.className = text.toLowerCase().replaceAll(" ", "-");
  b.addEventListener("click", action);
  return b;
}

function queueItem(job) {
  const li = document.createElement("li");
  li.dataset.id = job.id;
  li.innerHTML = `<div><div class="prompt"></div><progress max="100"></progress>
    <div class="meta"><span class="status"></span> · <span class="progress"></span> · <span class="windows"></span>
    · <span class="eta"></span></div></div><div class="actions"></div>`;
  $(".prompt", li).textContent = job.prompt || "(no prompt)";
  $(".actions", li).append(button("Cancel", () => api("POST", `/v1/videos/${job.id}/cancel`).then(refresh)),
                           button("Delete", () => remove(job, li)));
  return li;
}

function updateItem(li, job) {
  $(".status", li).textContent = job.status === "queued" ? `queued (#${job.queue_position + 1})` : "making";
  $("progress", li).value = job.progress;
  $(".progress", li).textContent = `${job.progress}%`;
  $(".windows", li).textContent = `window ${Math.min(job.windows_done + 1, job.windows)}/${job.windows}`;
  $(".eta", li).textContent = job.status === "queued" ? `${job.frames} frames` : timeLeft(job.eta_s);
  if (job.live) {  // a live job: the stream as it is made, a prompt box and a stop button instead of a preview
    $(".windows", li).textContent = `window ${job.windows_done + 1}, live`;
    $(".eta", li).textContent = job.status === "queued" ? "until stopped" : "until stopped (or its most)";
    if (!li.live) li.live = liveView(li, job);
    return;
  }
  if (job.windows > 1 && job.windows_done > 0 && li.dataset.previewed !== String(job.windows_done)) {
    let video = $("video.preview", li);
    if (!video) {
      video = document.createElement("video");
      Object.assign(video, { className: "preview", muted: true, autoplay: true, loop: true, playsInline: true });
      li.append(video);
    }
    li.dataset.previewed = String(job.windows_done);  // a new window: the preview has grown
    video.src = `/v1/videos/${job.id}/content?variant=preview&windows=${job.windows_done}`;
  }
}

// ------------------------------------------------------------------ a live job: watched and steered

// The stream comes over WS /v1/realtime/video (joined by the job's id) as fragmented MP4 chunks, one per window,
// appended to Media Source Extensions; the player keeps to the newest window. The prompt box posts
// /v1/videos/{id}/prompt, which answers the window the change lands at; Stop cancels: the job completes with
// everything it made.
function liveView(li, job) {
  const box = document.createElement("div");
  box.className = "live";
  box.innerHTML = `<video class="live-video" muted autoplay playsinline></video>
    <form class="steer"><input class="live-prompt" placeholder="what the video shows next" aria-label="new prompt">
    <button type="submit">Steer</button></form><div class="meta live-note" aria-live="polite"></div>`;
  li.append(box);
  $(".actions", li).prepend(button("Stop", () => api("POST", `/v1/videos/${job.id}/cancel`).then(refresh)));
  $(".steer", box).addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = $(".live-prompt", box).value.trim();
    try {
      const change = await api("POST", `/v1/videos/${job.id}/prompt`, { prompt });
      $(".live-note", box).textContent = `from window ${change.window + 1}: ${change.prompt}`;
      $(".live-prompt", box).value = "";
    } catch (error) {
      $(".live-note", box).textContent = error.message;
    }
  });
  return play(job.id, $("video", box), $(".live-note", box));
}

function play(id, video, note) {
  const media = new MediaSource();
  const chunks = [];
  let buffer = null;
  video.src = URL.createObjectURL(media);
  const socket = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/realtime/video`);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => socket.send(JSON.stringify({ type: "session.start", video_id: id }));
  socket.onmessage = (event) => {
    if (typeof event.data === "string") {
      const message = JSON.parse(event.data);
      if (message.type === "error") note.textContent = message.message;
      return;
    }
    chunks.push(new Uint8Array(event.data));
    feed();
  };
  function feed() {
    if (media.readyState !== "open" || !chunks.length || (buffer && buffer.updating)) return;
    if (!buffer) {
      buffer = media.addSourceBuffer(`video/mp4; codecs="${codec(chunks[0])}"`);
      buffer.addEventListener("updateend", () => { follow(video); feed(); });
    }
    buffer.appendBuffer(chunks.shift());
  }
  media.addEventListener("sourceopen", feed);
  return socket;
}

// The H.264 profile and level of the stream, from its avcC box: what MediaSource needs to be told.
function codec(init) {
  for (let i = 0; i + 8 < init.length; i++) {
    if (init[i] === 0x61 && init[i + 1] === 0x76 && init[i + 2] === 0x63 && init[i + 3] === 0x43) {  // "avcC"
      const hex = (b) => b.toString(16).padStart(2, "0");
      return `avc1.${hex(init[i + 5])}${hex(init[i + 6])}${hex(init[i + 7])}`;
    }
  }
  return "avc1.64001f";
}

// Keep to the newest window: a player that fell behind (or joined mid-stream) jumps to the start of the last one.
function follow(video) {
  const ranges = video.buffered;
  if (!ranges.length) return;
  const start = ranges.start(ranges.length - 1), end = ranges.end(ranges.length - 1);
  if (video.currentTime < start || end - video.currentTime > 6) video.currentTime = Math.max(start, end - 3);
  if (video.paused) video.play().catch(() => {});
}

function card(job) {
  const div = document.createElement("div");
  div.className = "card";
  div.dataset.id = job.id;
  const title = document.createElement("div");
  title.className = "prompt";
  title.textContent = job.prompt || "(no prompt)";
  const meta = document.createElement("div");
  meta.className = "meta";
  meta.textContent = `${job.status} · ${job.command} · ${job.model} · ${job.size} · ${job.frames} frames · seed ${job.seed}`;
  div.append(title, meta);
  if (job.status === "completed") {
    const video = document.createElement("video");
    Object.assign(video, { controls: true, preload: "metadata", src: `/v1/videos/${job.id}/content` });
    const details = document.createElement("details");
    details.innerHTML = "<summary>Settings</summary>";
    details.addEventListener("toggle", async () => {
      if (details.open && !$("table", details)) {
        const settings = await api("GET", `/v1/videos/${job.id}/content?variant=settings`);
        details.append(settingsTable(settings));
      }
    });
    div.append(video, details);
  } else if (job.error) {
    const error = document.createElement("div");
    error.className = "error";
    error.textContent = job.error.message;
    div.append(error);
  }
  const actions = document.createElement("div");
  actions.className = "actions";
  if (job.status === "completed") actions.append(button("Again with changes", () => again(job)));
  // A stopped extend keeps its finished windows: the service continues it from the last one.
  if (job.command === "extend" && (job.status === "cancelled" || job.status === "failed")) {
    actions.append(button("Continue", () => resume(job, div)));
  }
  actions.append(button("Delete", () => remove(job, div)));
  div.append(actions);
  return div;
}

// The recorded settings as rows of name and value, by group (request, model, run); unset values left out.
function settingsTable(settings) {
  const table = document.createElement("table");
  table.className = "settings";
  const row = (name, value, group) => {
    const tr = table.insertRow();
    if (group) tr.className = "group";
    const th = document.createElement("th");
    th.textContent = name;
    tr.append(th);
    tr.insertCell().textContent = value;
  };
  for (const group of ["request", "model", "run"]) {
    const values = Object.entries(settings[group] || {}).filter(([, v]) => v !== null && v !== "" &&
                                                                   !(Array.isArray(v) && !v.length));
    if (!values.length) continue;
    row(group, "", true);
    for (const [name, value] of values) row(name.replaceAll("_", " "), readable(value));
  }
  return table;
}

// A value as a person reads it: an object as "name value, ...", a list of records as how many there are
// (the per-window colour statistics are for tools, not for reading here), rounded numbers.
function readable(value) {
  if (typeof value === "number") return String(Math.round(value * 1000) / 1000);
  if (Array.isArray(value)) {
    return value.some((v) => v !== null && typeof v === "object") ? `${value.length} entries`
      : value.map(readable).join(", ");
  }
  if (value !== null && typeof value === "object") {
    return Object.entries(value).filter(([, v]) => v !== null)
      .map(([k, v]) => `${k.replaceAll("_", " ")} ${readable(v)}`).join(", ");
  }
  return String(value);
}

function showError(element, error) {
  let line = $(".error", element);
  if (!line) {
    line = document.createElement("div");
    line.className = "error";
    $(".actions", element).before(line);
  }
  line.textContent = error.message;
}

async function resume(job, element) {
  try {
    await api("POST", `/v1/videos/${job.id}/resume`);
  } catch (error) {
    showError(element, error);
    return;
  }
  await refresh();
}

async function remove(job, element) {
  const what = job.prompt ? `"${job.prompt.length > 60 ? job.prompt.slice(0, 60) + "…" : job.prompt}"` : job.id;
  if (!confirm(`Delete ${what}? Its video and settings are removed from the service.`)) return;
  try {
    await api("DELETE", `/v1/videos/${job.id}`);
  } catch (error) {
    showError(element, error);
    return;
  }
  if (shown.has(job.id)) shown.get(job.id).element.remove();
  shown.delete(job.id);
  await refresh();
}

async function refresh() {
  let list;
  try {
    list = await api("GET", "/v1/videos?limit=100");
  } catch (error) {
    $("#health").textContent = `service unreachable: ${error.message}`;
    return;
  }
  const seen = new Set();
  for (const job of [...list.data].reverse()) {  // oldest first, so each new one goes on top
    seen.add(job.id);
    const running = job.status === "queued" || job.status === "in_progress";
    let entry = shown.get(job.id);
    if (entry && entry.running !== running) {
      entry.element.remove();
      entry = undefined;
    }
    if (!entry) {
      entry = { running, element: running ? queueItem(job) : card(job) };
      (running ? $("#jobs") : $("#videos")).prepend(entry.element);
      shown.set(job.id, entry);
    }
    if (running) updateItem(entry.element, job);
  }
  for (const [id, entry] of shown) if (!seen.has(id)) { entry.element.remove(); shown.delete(id); }
  if (noted && !(shown.get(noted) || {}).running) {  // the job the note is about has ended (or is gone)
    $("#note").textContent = "";
    noted = null;
  }
  $("#queue-empty").hidden = $("#jobs").children.length > 0;
  $("#gallery-empty").hidden = $("#videos").children.length > 0;
}

async function health() {
  try {
    const h = await api("GET", "/health");
    const workers = h.workers.map((w) => `${w.name}${w.job ? " (busy)" : ""}`).join(", ") || "no workers";
    $("#health").textContent = `${workers} · ${h.queue.queued} queued · ${h.queue.in_progress} running`;
  } catch (error) {
    $("#health").textContent = `service unreachable: ${error.message}`;
  }
}

async function start() {
  try {
    options = await api("GET", "/v1/options");
  } catch (error) {
    if (error.status === 401) {
      locked();
    } else {
      $("#health").textContent = `service unreachable: ${error.message}`;
      $("#submit").disabled = true;
    }
    return;
  }
  for (const [id, name] of [["#aspect", "aspect"], ["#resolution", "resolution"]]) {
    for (const choice of options.fields[name].choices) $(id).add(new Option(choice, choice));
  }
  $("#prompt").maxLength = options.max_prompt_chars;
  $("#command").addEventListener("change", buildAdvanced);
  for (const file of document.querySelectorAll("[data-upload] input")) file.addEventListener("change", showUploads);
  for (const clear of document.querySelectorAll(".clear-file")) clear.addEventListener("click", clearFile);
  $("#form").addEventListener("submit", submit);
  buildAdvanced();
  await refresh();
  await health();
  setInterval(refresh, POLL_MS);
  setInterval(health, 3000);
}

// Without its token nothing works: instead of an empty form, a box for the token (kept for this tab only).
function locked() {
  $("main").hidden = true;
  $("#locked").hidden = false;
  $("#health").textContent = token ? "the token was refused" : "needs its token";
  if (token) $("#locked-why").textContent = "The token this tab had was refused: paste the service's token.";
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("skyreels-token", $("#token").value.trim());
    location.reload();
  });
  $("#token").focus();
}

start();
