// facestudio's page: talks to the /v1 API of the server that served it; nothing is loaded from elsewhere.
"use strict";

const COLOURS = ["#e4572e", "#17bebb", "#ffc914", "#76b041"];
const $ = (selector, root = document) => root.querySelector(selector);
const PAGE = 6;  // jobs per gallery page
const state = { people: [], drawing: null, style: null, scene: null, job: null, abort: null, limits: null,
                defaultSide: 512,  // the pipeline's default side, from /v1/models
                defaultNegative: "",  // the negative prompt a job without one gets, from /v1/models
                size: null,  // the output size the regions were drawn for (they follow when it changes)
                offset: 0, galleryUrls: [],  // the gallery's page (jobs skipped) and its blob URLs
                saved: null };  // the stored identities: one /v1/identities request for every person card

// ------------------------------------------------------------------ talking to the server

function token() { return sessionStorage.getItem("facestudio-token") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers.Authorization = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) $("#token-box").hidden = false;
  return response;
}

async function apiJson(path, options) {
  const response = await api(path, options);
  const body = response.status === 204 ? null : await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body && body.error ? body.error : "HTTP " + response.status);
  return body;
}

async function blobUrl(path) {
  const response = await api(path);
  if (!response.ok) throw new Error("could not fetch " + path);
  return URL.createObjectURL(await response.blob());
}

// ------------------------------------------------------------------ people

function addPerson(saved) {
  if (state.people.length >= 4) return;
  const node = $("#person-template").content.firstElementChild.cloneNode(true);
  const person = { node, identity: null, name: "", region: null, strength: 1 };
  state.people.push(person);
  $("#people").appendChild(node);
  const photos = $(".photos", node);
  photos.addEventListener("change", () => uploadPhotos(person, photos.files));
  node.addEventListener("dragover", (e) => { e.preventDefault(); node.classList.add("over"); });
  node.addEventListener("dragleave", () => node.classList.remove("over"));
  node.addEventListener("drop", (e) => {
    e.preventDefault(); node.classList.remove("over");
    if (e.dataTransfer.files.length) uploadPhotos(person, e.dataTransfer.files);
  });
  $(".saved", node).addEventListener("change", (e) => useSaved(person, e.target.value));
  const strength = $(".strength", node);
  strength.addEventListener("input", () => {
    person.strength = Number(strength.value);
    $(".strength-out", node).value = person.strength.toFixed(2);
  });
  $(".draw-region", node).addEventListener("click", () => selectForDrawing(person));
  $(".clear-region", node).addEventListener("click", () => setRegion(person, null));
  node.querySelectorAll("input.r").forEach((input) => input.addEventListener("change", () => {
    const values = [...node.querySelectorAll("input.r")].map((i) => i.value === "" ? NaN : Number(i.value));
    setRegion(person, values.every(Number.isFinite) ? values : null, false);
  }));
  $(".remove", node).addEventListener("click", () => removePerson(person));
  fillSavedList(person);
  if (saved) useSaved(person, saved.id, saved);
  relabel();
  return person;
}

function removePerson(person) {
  state.people = state.people.filter((p) => p !== person);
  person.node.remove();
  if (state.drawing === person) state.drawing = null;
  relabel();
  clearCardError();
}

function failingCards() {
  return state.people.filter((p) => !p.identity && $(".faces-status", p.node).textContent !== "no photos yet");
}

function clearCardError() {
  // The error about a card goes once no card is failing any more (fixed or removed).
  if (state.cardError && !failingCards().length) { $("#form-error").textContent = ""; state.cardError = false; }
}

function relabel() {
  state.people.forEach((p, i) => {
    p.node.id = "person-" + (i + 1);
    $("legend", p.node).textContent = "Person " + (i + 1) + (p.name ? ": " + p.name : "");
    p.node.style.borderColor = COLOURS[i];
  });
  $("#mix-box").hidden = state.people.length < 2;
  $("#add-person").disabled = state.people.length >= 4;
  drawRegions();
}

function savedIdentities() {
  // Fetched once and shared (reusing a job adds several cards at once); forgotten after an upload adds one.
  // Damaged entries (listed apart by the server) are not offered.
  if (!state.saved) state.saved = apiJson("/v1/identities").then((r) => r.identities)
    .catch((e) => { state.saved = null; throw e; });
  return state.saved;
}

async function fillSavedList(person) {
  try {
    const identities = await savedIdentities();
    const select = $(".saved", person.node);
    const chosen = select.value;
    select.querySelectorAll("option:not([value=''])").forEach((o) => o.remove());
    for (const identity of identities) {
      const option = document.createElement("option");
      option.value = identity.id;
      option.textContent = identity.name + " (" + identity.photos.length + " photo" + (identity.photos.length > 1 ? "s" : "") + ")";
      select.appendChild(option);
    }
    select.value = identities.some((i) => i.id === chosen) ? chosen : "";
  } catch (e) { /* the list is a convenience; uploading still works */ }
}

function refreshSaved() {
  // After an upload, a rename or a delete: every card's list and the saved-identities section.
  state.saved = null;
  state.people.forEach(fillSavedList);
  showSavedList();
}

async function showSavedList() {
  const list = $("#saved-list");
  let identities;
  try { identities = await savedIdentities(); } catch (e) { list.textContent = e.message; return; }
  list.textContent = "";
  if (!identities.length) { list.textContent = "none yet: photos uploaded on a card are kept here"; return; }
  for (const identity of identities) {
    const item = $("#saved-template").content.firstElementChild.cloneNode(true);
    item.dataset.id = identity.id;
    const name = $(".saved-name", item);
    name.value = identity.name;
    name.setAttribute("aria-label", "name of identity " + identity.name);
    $(".saved-photos", item).textContent = identity.photos.length + " photo" + (identity.photos.length > 1 ? "s" : "");
    const thumb = $(".saved-thumb", item);
    thumb.alt = identity.name;
    if (identity.thumbnail) blobUrl(identity.thumbnail).then((url) => { thumb.src = url; }).catch(() => {});
    const status = $(".saved-status", item);
    const rename = async () => {
      try {
        await apiJson("/v1/identities/" + identity.id, { method: "PATCH", headers: { "Content-Type": "application/json" },
                                                        body: JSON.stringify({ name: name.value }) });
        state.people.filter((p) => p.identity === identity.id).forEach((p) => { p.name = name.value.trim(); });
        relabel();
        refreshSaved();
      } catch (e) { status.textContent = e.message; status.classList.add("error"); }
    };
    $(".saved-rename", item).addEventListener("click", rename);
    name.addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); rename(); } });
    $(".saved-delete", item).addEventListener("click", async () => {
      if (!confirm("Delete the identity " + identity.name + "?")) return;
      try {
        await apiJson("/v1/identities/" + identity.id, { method: "DELETE" });
        for (const p of state.people.filter((q) => q.identity === identity.id)) {
          p.identity = null;
          p.name = "";
          $(".thumbs", p.node).textContent = "";
          $(".faces-status", p.node).textContent = "no photos yet";
        }
        relabel();
        refreshSaved();
      } catch (e) { status.textContent = e.message; status.classList.add("error"); }
    });
    list.append(item);
  }
}

async function useSaved(person, id, known) {
  if (!id) return;
  try {
    const identity = known && known.photos ? known : await apiJson("/v1/identities/" + id);
    showIdentity(person, identity, []);
  } catch (e) { $(".faces-status", person.node).textContent = e.message; }
}

async function uploadPhotos(person, files) {
  const status = $(".faces-status", person.node);
  if (!files.length) return;
  status.textContent = "finding faces…";
  status.classList.remove("error");
  const form = new FormData();
  for (const file of files) form.append("photos", file, file.name);
  try {
    const identity = await apiJson("/v1/identities", { method: "POST", body: form });
    showIdentity(person, identity, [...files]);
    refreshSaved();
  } catch (e) {
    person.identity = null;
    status.textContent = e.message;
    status.classList.add("error");
  }
}

function showIdentity(person, identity, files) {
  person.identity = identity.id;
  person.name = identity.name;
  const found = identity.photos.map((p) => p.faces.length + " face" + (p.faces.length === 1 ? "" : "s") +
    " found in " + p.name + "; using face " + p.used).join(". ");
  $(".faces-status", person.node).textContent = found || "saved identity " + identity.name;
  const thumbs = $(".thumbs", person.node);
  thumbs.textContent = "";
  identity.photos.forEach((photo, i) => { if (files[i]) drawFaces(thumbs, files[i], photo); });
  if (!files.length && identity.thumbnail) {  // a saved identity: its stored face picture
    const img = document.createElement("img");
    img.className = "face-thumb";
    img.alt = "face of " + identity.name;
    img.width = img.height = 80;
    thumbs.append(img);
    blobUrl(identity.thumbnail).then((url) => { img.src = url; }).catch(() => img.remove());
  }
  relabel();
  clearCardError();
}

async function drawFaces(container, file, photo) {
  // The photo with every detected face boxed: the one used in green, others in grey.
  const bitmap = await createImageBitmap(file);
  const canvas = document.createElement("canvas");
  const scale = 160 / Math.max(bitmap.width, bitmap.height);
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", photo.name + " with " + photo.faces.length + " detected face(s)");
  canvas.className = "faces";
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  photo.faces.forEach((face, i) => {
    const [x0, y0, x1, y1] = face.box.map((v) => v * scale);
    ctx.lineWidth = 2;
    ctx.strokeStyle = i === photo.used ? "#2ecc40" : "#999";
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  });
  container.appendChild(canvas);
}

// ------------------------------------------------------------------ regions on the canvas

function sideSet(id) {
  const value = $("#" + id).value;
  return value === "" ? null : Number(value) || null;
}

function outputSize() {
  // The size the server will make, by its rules: as set; else the scene image's shape at the pipeline's default
  // side (when neither is set); else the default side for what is not set.
  const w = sideSet("width"), h = sideSet("height"), side = state.defaultSide;
  if (w && h) return { w, h };
  if (state.scene && state.scene.width && !w && !h) {
    const scale = side / Math.max(state.scene.width, state.scene.height);
    const fit = (v) => Math.max(8, Math.round(v * scale / 8) * 8);
    return { w: fit(state.scene.width), h: fit(state.scene.height) };
  }
  return { w: w || side, h: h || side };
}

function showSizeHints() {
  // Empty size fields show the size that will be used instead.
  const { w, h } = outputSize();
  $("#width").placeholder = String(w);
  $("#height").placeholder = String(h);
}

function canvasScale() {
  // Canvas pixels per output pixel; only drawRegions sizes the canvas (setting its size clears it).
  const { w, h } = outputSize();
  return 320 / Math.max(w, h);
}

function selectForDrawing(person) {
  state.drawing = state.drawing === person ? null : person;
  state.people.forEach((p) => $(".draw-region", p.node).setAttribute("aria-pressed", String(p === state.drawing)));
  if (state.drawing) $("#regions").focus();
}

function followSize() {
  // When the output size changes (typed, or a scene image's shape), every region scales with it, so a box drawn
  // at 128 px still covers the same part of the image at 64 px.
  const size = outputSize();
  const old = state.size;
  state.size = size;
  if (!old || (old.w === size.w && old.h === size.h)) return;
  for (const p of state.people) {
    if (!p.region) continue;
    const [x0, y0, x1, y1] = p.region;
    const sx = size.w / old.w, sy = size.h / old.h;
    p.region = [Math.round(x0 * sx), Math.round(y0 * sy), Math.min(size.w, Math.round(x1 * sx)),
                Math.min(size.h, Math.round(y1 * sy))];
    p.node.querySelectorAll("input.r").forEach((input, i) => { input.value = p.region[i]; });
  }
}

function setRegion(person, box, fillInputs = true) {
  followSize();
  const { w, h } = outputSize();
  if (box) {
    let [x0, y0, x1, y1] = box.map(Math.round);
    [x0, x1] = [Math.max(0, Math.min(x0, x1)), Math.min(w, Math.max(x0, x1))];
    [y0, y1] = [Math.max(0, Math.min(y0, y1)), Math.min(h, Math.max(y0, y1))];
    box = x1 - x0 >= 2 && y1 - y0 >= 2 ? [x0, y0, x1, y1] : null;
  }
  person.region = box;
  // Typed numbers stay as typed while incomplete; drawn or cleared boxes are written back to the inputs.
  if (fillInputs) person.node.querySelectorAll("input.r").forEach((input, i) => { input.value = box ? box[i] : ""; });
  drawRegions();
}

async function drawRegions() {
  followSize();
  showSizeHints();
  const { w, h } = outputSize();
  const scale = canvasScale();
  const canvas = $("#regions");
  canvas.width = Math.max(1, Math.round(w * scale));
  canvas.height = Math.max(1, Math.round(h * scale));
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#2b2b30";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (state.scene && state.scene.bitmap) ctx.drawImage(state.scene.bitmap, 0, 0, canvas.width, canvas.height);
  state.people.forEach((p, i) => {
    if (!p.region) return;
    const [x0, y0, x1, y1] = p.region.map((v) => v * scale);
    ctx.fillStyle = COLOURS[i] + "55";
    ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
    ctx.strokeStyle = COLOURS[i];
    ctx.lineWidth = 2;
    ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
    ctx.fillStyle = "#fff";
    ctx.font = "14px sans-serif";
    ctx.fillText(String(i + 1), x0 + 4, y0 + 16);
  });
}

function setupCanvas() {
  const canvas = $("#regions");
  let start = null;
  const point = (e) => {
    const rect = canvas.getBoundingClientRect();
    const scale = canvasScale();
    return [(e.clientX - rect.left) * (canvas.width / rect.width) / scale,
            (e.clientY - rect.top) * (canvas.height / rect.height) / scale];
  };
  canvas.addEventListener("pointerdown", (e) => {
    if (!state.drawing) { $("#progress-text").textContent = "choose “Draw region” on a person first"; return; }
    start = point(e);
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => { if (start) setRegion(state.drawing, [...start, ...point(e)]); });
  canvas.addEventListener("pointerup", (e) => {
    if (!start) return;
    setRegion(state.drawing, [...start, ...point(e)]);
    start = null;
  });
  canvas.addEventListener("keydown", (e) => {
    // Keyboard: with a person selected, arrows move the region by 8 px (Shift: resize it).
    const person = state.drawing;
    const moves = { ArrowLeft: [-8, 0], ArrowRight: [8, 0], ArrowUp: [0, -8], ArrowDown: [0, 8] };
    if (!person || !moves[e.key]) return;
    e.preventDefault();
    const { w, h } = outputSize();
    const box = person.region || [w / 4, h / 4, (3 * w) / 4, (3 * h) / 4];
    const [dx, dy] = moves[e.key];
    setRegion(person, e.shiftKey ? [box[0], box[1], box[2] + dx, box[3] + dy]
                                 : [box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy]);
  });
  ["width", "height"].forEach((id) => ["change", "input"].forEach((kind) => $("#" + id).addEventListener(kind, drawRegions)));
}

// ------------------------------------------------------------------ style and scene images

async function uploadReference(kind, file) {
  const status = $("#" + kind + "-status");
  status.textContent = "checking…";
  status.classList.remove("error");
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("purpose", kind);  // a scene image without a face is refused here, not once queued
  try {
    const info = await apiJson("/v1/images", { method: "POST", body: form });
    state[kind] = { id: info.id, bitmap: await createImageBitmap(file), width: info.width, height: info.height };
    status.textContent = file.name + ": " + info.width + "×" + info.height + ", " + info.faces.length + " face(s)";
    if (kind === "scene") drawRegions();
  } catch (e) {
    state[kind] = null;
    status.textContent = e.message;
    status.classList.add("error");
  }
}

function clearReference(kind) {
  state[kind] = null;
  $("#" + kind + "-file").value = "";
  $("#" + kind + "-status").textContent = "";
  drawRegions();
}

// ------------------------------------------------------------------ generating

function request() {
  const people = state.people.filter((p) => p.identity);
  const placedBySource = $("#regions-source").value !== "auto";
  const body = {
    prompt: $("#prompt").value.trim(),
    // what the box shows is what is used: empty is no negative prompt, not the server's default
    negative_prompt: $("#negative").value.trim(),
    // Drawn regions only when they place the people: not with a scene image or a named source.
    identities: people.map((p) => ({ id: p.identity, region: state.scene || placedBySource ? null : p.region,
                                     strength: p.strength })),
    text_guidance_scale: Number($("#text-scale").value),
    reference_guidance_scale: Number($("#ref-scale").value),
    steps: Number($("#steps").value), count: Number($("#count").value),
    style_image: state.style ? state.style.id : null,
    style_strength: Number($("#style-strength").value),
    scene_image: state.scene ? state.scene.id : null,
  };
  // The server resolves the regions; the page only names the source ("auto" is the server's default).
  if ($("#regions-source").value !== "auto") body.regions = $("#regions-source").value;
  if ($("#seed").value !== "") body.seed = Number($("#seed").value);
  if ($("#scheduler").value) body.scheduler = $("#scheduler").value;
  if (!$("#shortcut-scale").disabled && $("#shortcut-scale").value !== "")
    body.shortcut_scale = Number($("#shortcut-scale").value);
  // Sizes only when set: otherwise the server's default (the scene's shape, or the pipeline's default side).
  for (const id of ["width", "height"]) if (sideSet(id)) body[id] = sideSet(id);
  if (people.length === 2 && $("#mix-on").checked) {
    const share = Number($("#mix").value);
    body.mix = [Number((1 - share).toFixed(4)), Number(share.toFixed(4))];
  }
  return body;
}

async function generate(event) {
  event.preventDefault();
  $("#form-error").textContent = "";
  state.cardError = false;
  if (failingCards().length) {
    $("#form-error").textContent = "a person's photos were not accepted; fix or remove that person first";
    state.cardError = true;
    return;
  }
  let job;
  try {
    job = await apiJson("/v1/generations", { method: "POST", headers: { "Content-Type": "application/json" },
                                             body: JSON.stringify(request()) });
  } catch (e) {
    $("#form-error").textContent = e.message;
    $("#progress").value = 0;
    $("#progress-text").textContent = "not started: " + e.message;
    return;
  }
  state.job = job.id;
  $("#generate").disabled = true;
  $("#cancel").disabled = false;
  showProgress(job);
  revealProgress();
  await follow(job.id);
}

function revealProgress() {
  // Progress and the newest result are beside the settings on a wide window (the right column stays in view);
  // on a narrow one they are below the settings: the view moves there.
  const box = $("#progress-box").getBoundingClientRect();
  if (box.top < 0 || box.bottom > innerHeight) $("#progress-box").scrollIntoView({ block: "start" });
}

async function follow(id) {
  // Server-sent events read through fetch, so the bearer token travels in a header.
  state.abort = new AbortController();
  let last = null;
  try {
    const response = await api("/v1/generations/" + id + "/events", { signal: state.abort.signal });
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
        if (data) { last = JSON.parse(data); showProgress(last); }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") $("#form-error").textContent = "lost the progress stream: " + e.message;
  }
  if (!last || ["queued", "running"].includes(last.state)) last = await apiJson("/v1/generations/" + id);
  showProgress(last);
  state.offset = 0;  // the newest page: the job just made is on it
  await showGallery();
  $("#generate").disabled = false;
  $("#cancel").disabled = true;
  state.job = null;
}

function showProgress(job) {
  const bar = $("#progress");
  bar.max = job.total_steps;
  bar.value = job.step;
  const text = {
    queued: "waiting" + (job.queue_position ? " (" + job.queue_position + " job(s) ahead)" : ""),
    running: "step " + job.step + " of " + job.total_steps,
    done: "done: " + job.images.length + " image(s)",
    cancelled: "cancelled", timed_out: "stopped: " + job.error, failed: "failed: " + job.error,
  }[job.state] || job.state;
  $("#progress-text").textContent = text;
  if (job.preview) { $("#preview").src = job.preview; $("#preview").hidden = false; }
  if (job.state === "failed") $("#form-error").textContent = job.error;
}

async function showGallery() {
  // One page of jobs, newest first; one more is asked for to know whether there is an older page.
  let jobs;
  try {
    jobs = await apiJson("/v1/generations?limit=" + (PAGE + 1) + "&offset=" + state.offset);
  } catch (e) { return; /* an empty gallery is fine */ }
  const older = jobs.length > PAGE;
  const figures = [];
  const urls = [];
  for (const job of jobs.slice(0, PAGE)) {
    for (const image of job.images) {
      try {
        const url = await blobUrl(image.url);
        urls.push(url);
        figures.push(resultFigure(job, image, url));
      } catch (e) { /* deleted meanwhile */ }
    }
  }
  state.galleryUrls.forEach((url) => URL.revokeObjectURL(url));
  state.galleryUrls = urls;
  $("#gallery").replaceChildren(...figures);
  if (!figures.length) $("#gallery").textContent = state.offset ? "no results on this page" : "no results yet";
  $("#newer").disabled = state.offset === 0;
  $("#older").disabled = !older;
  $("#page-label").textContent = "page " + (Math.floor(state.offset / PAGE) + 1);
}

function resultFigure(job, image, url) {
  const figure = document.createElement("figure");
  const img = document.createElement("img");
  img.src = url;
  img.alt = "result: " + job.request.prompt + ", seed " + image.seed;
  img.title = "show full size";
  const caption = document.createElement("figcaption");
  const r = job.request;
  const size = document.createElement("span");  // the image's own size (the request may leave it to the server)
  size.textContent = r.width && r.height ? r.width + "×" + r.height : "";
  img.addEventListener("load", () => { size.textContent = img.naturalWidth + "×" + img.naturalHeight; });
  caption.append(r.prompt + " · seed " + image.seed + " · ", size,
    " · " + (r.steps || "") + " steps · text " + r.text_guidance_scale + " / reference " +
    (r.reference_guidance_scale ?? r.text_guidance_scale) +
    (r.identities.length ? " · " + r.identities.map((p) => "strength " + p.strength).join(", ") : ""));
  const name = "facestudio-" + job.id.slice(0, 8) + "-" + image.name;
  const again = button("Use these settings again", () => reuse(r, image.seed));
  const full = button("Full size", () => showFull(url, name, img.alt));
  img.addEventListener("click", () => showFull(url, name, img.alt));
  const remove = button("Delete", async () => {
    if (!confirm("Delete this image?")) return;
    try { await apiJson(image.url, { method: "DELETE" }); await showGallery(); } catch (e) { caption.append(" " + e.message); }
  });
  const download = document.createElement("a");
  download.href = url;
  download.download = name;
  download.textContent = "Download";
  caption.append(document.createElement("br"), again, full, download, " ", remove);
  figure.append(img, caption);
  return figure;
}

function button(text, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.addEventListener("click", action);
  return b;
}

function showFull(url, name, alt) {
  $("#viewer-image").src = url;
  $("#viewer-image").alt = alt;
  $("#viewer-caption").textContent = alt;
  $("#viewer-download").href = url;
  $("#viewer-download").download = name;
  $("#viewer").showModal();
}

async function reuse(r, seed) {
  $("#prompt").value = r.prompt;
  $("#negative").value = r.negative_prompt ?? state.defaultNegative;  // null: the job got the default
  $("#text-scale").value = r.text_guidance_scale;
  $("#ref-scale").value = r.reference_guidance_scale ?? r.text_guidance_scale;
  for (const id of ["width", "height"]) $("#" + id).value = r[id] || "";  // unset stays unset
  if (r.steps) $("#steps").value = r.steps;
  $("#count").value = 1;
  $("#seed").value = seed;
  $("#style-strength").value = r.style_strength;
  $("#mix-on").checked = Boolean(r.mix);  // mixed only if that job was
  if (r.mix) $("#mix").value = r.mix[1];
  $("#regions-source").value = r.regions || "auto";
  ["text-scale", "ref-scale", "mix", "style-strength"].forEach((id) => $("#" + id).dispatchEvent(new Event("input")));
  [...state.people].forEach(removePerson);
  for (const placement of r.identities) {
    const person = addPerson({ id: placement.id });
    $(".strength", person.node).value = placement.strength;
    $(".strength", person.node).dispatchEvent(new Event("input"));
    if (placement.region) setRegion(person, placement.region);
  }
  if (!state.people.length) addPerson();
  await Promise.all([keepReference("style", r.style_image), keepReference("scene", r.scene_image)]);
  $("#prompt").focus();
}

async function keepReference(kind, id) {
  // The job's style or scene image, still stored on the server: used again as it was.
  if (!id) { clearReference(kind); return; }
  const status = $("#" + kind + "-status");
  try {
    const response = await api("/v1/images/" + id);
    if (!response.ok) throw new Error("the job's " + kind + " image is no longer stored; choose it again");
    const bitmap = await createImageBitmap(await response.blob());
    state[kind] = { id, bitmap, width: bitmap.width, height: bitmap.height };
    $("#" + kind + "-file").value = "";
    status.textContent = "the job's " + kind + " image (" + bitmap.width + "×" + bitmap.height + ")";
    status.classList.remove("error");
  } catch (e) {
    state[kind] = null;
    status.textContent = e.message;
    status.classList.add("error");
  }
  drawRegions();
}

async function cancel() {
  if (!state.job) return;
  try { await apiJson("/v1/generations/" + state.job + "/cancel", { method: "POST" }); } catch (e) { /* shown by the stream */ }
}

// ------------------------------------------------------------------ start

function bindOutputs() {
  const outputs = { "text-scale": 1, "ref-scale": 1, mix: 2, "style-strength": 2 };
  for (const [id, digits] of Object.entries(outputs)) {
    $("#" + id).addEventListener("input", () => { $("#" + id + "-out").value = Number($("#" + id).value).toFixed(digits); });
  }
}


const REGION_LABELS = {
  split: "split: strips left to right",
  segment: "segment: the people of the scene or style image, by person segmentation",
};

function regionSources(names) {
  const select = $("#regions-source");
  for (const name of names) {
    if (name === "auto" || select.querySelector(`option[value="${name}"]`)) continue;
    const option = document.createElement("option");
    option.value = name;
    option.textContent = REGION_LABELS[name] || name;
    select.append(option);
  }
}

function fewStepControls(info) {
  // The sampler list, the loaded speed model (its guidance scale 1 becomes the sliders' value), the preset's
  // negative prompt and the adapter's shortcut scale, as /v1/models says.
  const sampler = $("#scheduler");
  for (const name of info.schedulers || []) {
    if (![...sampler.options].some((o) => o.value === name)) sampler.add(new Option(name, name));
  }
  if (info.speed) {
    $("#speed").replaceChildren(new Option(info.speed, info.speed));
    for (const id of ["text-scale", "ref-scale"]) {
      $("#" + id).value = 1;
      $("#" + id + "-out").textContent = "1";
    }
  }
  state.defaultNegative = info.negative_prompt || "";  // what a job without one gets
  $("#negative").value = state.defaultNegative;
  $("#shortcut-scale").disabled = info.shortcut_scale == null;
  if (info.shortcut_scale != null) $("#shortcut-scale").placeholder = String(info.shortcut_scale);
}

async function loadModel() {
  try {
    const info = await apiJson("/v1/models");
    state.limits = info;
    $("#model-info").textContent = "model " + info.base_model + " · " + info.device + " · " + info.dtype +
      " · adapters: " + (info.adapters.map((a) => a.kind).join(", ") || "none");
    $("#steps").value = info.default_steps;
    fewStepControls(info);
    $("#count").max = info.max_count;
    ["width", "height"].forEach((id) => { $("#" + id).max = info.max_side; });
    state.defaultSide = info.default_side || state.defaultSide;
    regionSources(info.regions || ["auto"]);
    drawRegions();
    const style = info.adapters.some((a) => a.kind === "style");
    ["#style-file", "#style-strength", "#style-clear"].forEach((s) => { $(s).disabled = !style; });
    if (!style) $("#style-status").textContent = "needs a style adapter (facestudio serve --style-adapter …)";
    $("#token-box").hidden = true;
    if (!$("#gallery").children.length) showGallery();
    showSavedList();
  } catch (e) {
    $("#model-info").textContent = e.message;
  }
}

function start() {
  const fromUrl = /[#&]token=([^&]+)/.exec(location.hash);
  if (fromUrl) {
    sessionStorage.setItem("facestudio-token", decodeURIComponent(fromUrl[1]));
    history.replaceState(null, "", location.pathname);  // keep the token out of the address bar
  }
  $("#token-save").addEventListener("click", () => {
    sessionStorage.setItem("facestudio-token", $("#token").value.trim());
    loadModel();
  });
  $("#add-person").addEventListener("click", () => addPerson());
  $("#settings").addEventListener("submit", generate);
  $("#cancel").addEventListener("click", cancel);
  $("#random-seed").addEventListener("click", () => { $("#seed").value = Math.floor(Math.random() * 2 ** 31); });
  $("#style-file").addEventListener("change", (e) => e.target.files[0] && uploadReference("style", e.target.files[0]));
  $("#scene-file").addEventListener("change", (e) => e.target.files[0] && uploadReference("scene", e.target.files[0]));
  $("#style-clear").addEventListener("click", () => clearReference("style"));
  $("#newer").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE); showGallery(); });
  $("#older").addEventListener("click", () => { state.offset += PAGE; showGallery(); });
  // Any change to the settings may be the fix for the error shown: it goes, and comes back on Generate if not.
  $("#settings").addEventListener("input", () => { $("#form-error").textContent = ""; state.cardError = false; });
  $("#scene-clear").addEventListener("click", () => clearReference("scene"));
  bindOutputs();
  setupCanvas();
  addPerson();
  loadModel();
}

document.addEventListener("DOMContentLoaded", start);
