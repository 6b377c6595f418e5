// semdir-edit browser editor: plain JavaScript, no build step. The server API is described in
// semdir_edit/ui/server.py. One session (an inverted image) at a time per tab; slider moves post the whole
// slider state, at most one request in flight (a move during a request sends the latest state when it ends),
// and a response older than the one shown is dropped.
"use strict";

const $ = (id) => document.getElementById(id);
const SLIDER = { min: -3, max: 3, step: 0.05 };
const DOWNLOAD_SCALE = 4; // As `semdir-edit apply`'s default --scale.
const GROUP_TITLES = { global: "Global directions", class: "Class-specific directions", pca: "PCA directions",
  cpca: "Per-class PCA directions" };
const CLASS_GROUPS = ["class", "cpca"]; // Sets of the image's class: `${group}:${k}` is resolved with it.

const state = {
  info: null,
  session: null,      // The server's session JSON (id, name, class, figures, images).
  shifts: {},         // Direction spec -> eps; zeros are left out of requests.
  active: null,       // The last moved direction (for the traversal strip).
  target: null,       // Class name of the class-boundary direction.
  seq: 0,             // Number of the latest edit request sent ...
  shownSeq: 0,        // ... and of the one whose image is on the page.
  inFlight: false,
  pending: false,
  editedUrl: null,
};

// ----------------------------------------------------------------------------------------------- helpers

async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

function postJson(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

function showError(message) { $("error").textContent = message || ""; }

let statusTimer = null;
function setStatus(text, busy = false) {
  clearInterval(statusTimer);
  const status = $("status");
  status.classList.toggle("busy", busy);
  if (!busy) { status.textContent = text; return; }
  const t0 = performance.now();
  const tick = () => { status.textContent = `${text} ${((performance.now() - t0) / 1000).toFixed(1)} s`; };
  tick();
  statusTimer = setInterval(tick, 100);
}

function setInputsEnabled(enabled) {
  for (const id of ["random-test", "random-sample", "method", "steps"]) $(id).disabled = !enabled;
  $("drop").style.pointerEvents = enabled ? "" : "none";
}

function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

function shellQuote(text) {
  return /^[A-Za-z0-9_.,:@%+=\/-]+$/.test(text) ? text : "'" + text.replace(/'/g, "'\\''") + "'";
}

function fmt(x, digits) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }

// ------------------------------------------------------------------------------------------------- loading

async function loadInfo() {
  const info = await (await api("api/info")).json();
  state.info = info;
  $("weights").textContent = `weights: ${info.weights}`;
  for (const m of info.methods) $("method").add(new Option(m, m, m === info.method, m === info.method));
  $("steps").value = info.steps;
  for (const id of ["layer-lo", "layer-hi"]) $(id).max = info.num_ws - 1;
  $("layer-hi").value = info.num_ws - 1;
}

function inversionQuery() {
  const params = new URLSearchParams({ method: $("method").value });
  if ($("steps").value !== "") params.set("steps", $("steps").value);
  return params;
}

async function runLoad(label, request) {
  showError("");
  setInputsEnabled(false);
  setStatus(label, true);
  try {
    const session = await (await request()).json();
    setSession(session);
    setStatus(`${session.name}: ${session.source === "sample" ? "generated sample" : "inverted in " +
              fmt(session.seconds, 2) + " s"}`);
  } catch (error) {
    setStatus(state.session ? `still editing ${state.session.name}` : "Load an image to start.");
    showError(error.message);
  } finally {
    setInputsEnabled(true);
  }
}

function uploadFile(file) {
  if (!file) return;
  if (file.size > state.info.max_upload_bytes) {
    showError(`${file.name}: the file is too large (the limit is ${state.info.max_upload_bytes / 1e6} MB)`);
    return;
  }
  const params = inversionQuery();
  params.set("name", file.name);
  runLoad(`inverting ${file.name}…`, () => api(`api/sessions/upload?${params}`, {
    method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file }));
}

function randomImage(source) {
  const params = inversionQuery();
  params.set("source", source);
  runLoad(source === "test" ? "inverting a test image…" : "drawing a sample…",
          () => api(`api/sessions/random?${params}`, { method: "POST" }));
}

function setSession(session) {
  state.session = session;
  state.shifts = {};
  state.active = null;
  $("domain-img").src = session.domain;
  $("recon-img").src = session.reconstruction;
  $("edited-img").src = session.reconstruction;
  $("class").textContent = `${session.class_name} (${(100 * session.confidence).toFixed(1)}%)`;
  $("edited-class").textContent = "not edited yet";
  $("quality").textContent = session.psnr === null ? "exact (generated code)"
    : `PSNR ${fmt(session.psnr, 2)} dB · SSIM ${fmt(session.ssim, 3)}`;
  $("inversion").textContent = session.source === "sample" ? "none"
    : `${session.method}${session.steps ? `, ${session.steps} steps` : ""}, ${fmt(session.seconds, 2)} s`;
  const notes = $("notes");
  notes.replaceChildren(...session.notes.map((n) => Object.assign(document.createElement("li"), { textContent: n })));
  $("strip").style.display = "none";
  $("strip-label").textContent = "";
  for (const id of ["download-png", "download-latent", "download-strip", "reset"]) $(id).disabled = false;
  buildSliders();
  resetLayers();
  updateCommand();
}

// ------------------------------------------------------------------------------------------------- sliders

function describe(spec) {
  const d = state.info.descriptions[spec];
  if (!d) return { label: "", title: "not measured (run semdir-edit evaluate directions)" };
  const top = (d.top || []).map((t) => `${t.attribute} r=${Number(t.r).toFixed(2)}`).join(", ");
  return { label: d.label, title: `${spec}: ${d.label} (r=${Number(d.r).toFixed(2)})${top ? "; " + top : ""}` };
}

function makeSlider(spec, text, title) {
  const row = document.createElement("div");
  row.className = "slider";
  row.dataset.spec = spec;
  const label = document.createElement("label");
  label.title = title;
  label.innerHTML = "<b></b> ";
  label.firstChild.textContent = spec.startsWith("to:") ? "to:" : spec;
  label.append(text);
  const input = Object.assign(document.createElement("input"), { type: "range", value: 0, ...SLIDER });
  input.setAttribute("aria-label", `${spec} ${text}`);
  const output = Object.assign(document.createElement("output"), { textContent: "0.00" });
  input.addEventListener("input", () => {
    const eps = Number(input.value);
    output.textContent = eps.toFixed(2);
    const key = row.dataset.spec;
    if (eps === 0) delete state.shifts[key]; else state.shifts[key] = eps;
    setActive(key);
    scheduleEdit();
    updateCommand();
  });
  input.addEventListener("dblclick", () => { input.value = 0; input.dispatchEvent(new Event("input")); });
  row.append(label, input, output);
  return row;
}

function setActive(spec) {
  state.active = spec;
  for (const row of document.querySelectorAll(".slider")) row.classList.toggle("active", row.dataset.spec === spec);
}

function buildSliders() {
  const { info, session } = state;
  const groups = $("groups");
  groups.replaceChildren();
  for (const group of info.groups) {
    if (group === "cpca" && !(info.cpca_classes || []).includes(session.class_name)) continue; // No set.
    const perClass = CLASS_GROUPS.includes(group);
    const heading = document.createElement("h3");
    heading.textContent = GROUP_TITLES[group] + (perClass ? ` (${session.class_name})` : "");
    groups.append(heading);
    for (let k = 0; k < info.k[group]; k++) {
      const spec = `${group}:${k}`;
      const d = describe(perClass ? `${spec}@${session.class_name}` : spec);
      groups.append(makeSlider(spec, d.label, d.title));
    }
  }
  // Class boundary: towards any class but the image's own.
  $("boundary").hidden = !info.boundary;
  const target = $("target");
  target.replaceChildren(...info.class_names.filter((c) => c !== session.class_name).map((c) => new Option(c, c)));
  state.target = target.value;
  $("boundary-slider").replaceChildren(makeSlider(`to:${state.target}`, state.target, "move across the boundary "
    + "between the image's class and the target class"));
}

function changeTarget() {
  const row = $("boundary-slider").firstChild;
  const oldSpec = `to:${state.target}`;
  state.target = $("target").value;
  const newSpec = `to:${state.target}`;
  row.dataset.spec = newSpec;
  row.querySelector("label").lastChild.textContent = state.target;
  if (oldSpec in state.shifts) {
    state.shifts[newSpec] = state.shifts[oldSpec];
    delete state.shifts[oldSpec];
  }
  if (state.active === oldSpec) setActive(newSpec);
  scheduleEdit();
  updateCommand();
}

function layersSpec() {
  const n = state.info.num_ws;
  const lo = Math.min(Math.max(Number($("layer-lo").value) || 0, 0), n - 1);
  const hi = Math.min(Math.max(Number($("layer-hi").value) || 0, lo), n - 1);
  return lo === 0 && hi === n - 1 ? null : (lo === hi ? `${lo}` : `${lo}-${hi}`);
}

function changeLayers() {
  const layers = layersSpec();
  $("layers-note").textContent = layers === null ? "all layers" : `layers ${layers}`;
  scheduleEdit();
  updateCommand();
}

function resetLayers() {
  $("layer-lo").value = 0;
  $("layer-hi").value = state.info.num_ws - 1;
  $("layers-note").textContent = "all layers";
}

function reset() {
  for (const input of document.querySelectorAll(".slider input")) input.value = 0;
  for (const output of document.querySelectorAll(".slider output")) output.textContent = "0.00";
  state.shifts = {};
  setActive(null);
  resetLayers();
  scheduleEdit();
  updateCommand();
}

// ----------------------------------------------------------------------------------------------- editing

function editBody(scale = 1) {
  return { shifts: { ...state.shifts }, layers: layersSpec(), scale, keep_class: $("keep-class").checked };
}

function scheduleEdit() {
  if (!state.session) return;
  if (state.inFlight) { state.pending = true; return; }
  sendEdit();
}

async function sendEdit() {
  const seq = ++state.seq;
  const sessionId = state.session.session;
  state.inFlight = true;
  state.pending = false;
  const t0 = performance.now();
  try {
    const response = await postJson(`api/sessions/${sessionId}/edit`, editBody());
    const blob = await response.blob();
    // Drop a stale answer: another image was loaded meanwhile, or a newer edit is already shown.
    if (state.session && state.session.session === sessionId && seq > state.shownSeq) {
      state.shownSeq = seq;
      // What the classifier makes of the edited image, live (the line above describes the input).
      const edited = response.headers.get("X-Edited-Class");
      const confidence = Number(response.headers.get("X-Edited-Confidence"));
      if (edited) $("edited-class").textContent = `${decodeURIComponent(edited)} (${(100 * confidence).toFixed(1)}%)`;
      if (state.editedUrl) URL.revokeObjectURL(state.editedUrl);
      state.editedUrl = URL.createObjectURL(blob);
      $("edited-img").src = state.editedUrl;
      $("edited-img").dataset.seq = seq;
      $("edited-img").title = `edit request: ${(performance.now() - t0).toFixed(0)} ms`;
      showError("");
    }
  } catch (error) {
    showError(error.message);
  } finally {
    state.inFlight = false;
    if (state.pending) sendEdit();
  }
}

function updateCommand() {
  const { info, session } = state;
  if (!session) return;
  const base = ["semdir-edit apply", shellQuote(session.latent_name)];
  const extra = [];
  const layers = layersSpec();
  if (layers !== null) extra.push("--layers", layers);
  if (info.weights !== "weights/fashion_mnist") extra.push("--weights", shellQuote(info.weights));
  const specs = Object.keys(state.shifts);
  // apply walks class directions class-locked unless told --keep none, the others only with --keep class.
  const locked = $("keep-class").checked;
  const keep = (spec) => {
    if (spec.startsWith("to:")) return [];
    if (spec.startsWith("class:")) return locked ? [] : ["--keep", "none"];
    return locked ? ["--keep", "class"] : [];
  };
  const line = (spec, eps) => [...base, "--direction", shellQuote(spec), "--eps", String(eps), ...keep(spec),
    ...extra, "-o", shellQuote(`${session.name}.edited.png`)].join(" ");
  let text;
  if (specs.length === 0) text = `# no edit yet: move a slider\n${line(`${info.groups[0] || "pca"}:0`, 0)}`;
  else if (specs.length === 1) text = line(specs[0], state.shifts[specs[0]]);
  else text = `# apply takes one direction at a time; this edit adds ${specs.length}:\n`
    + specs.map((s) => line(s, state.shifts[s])).join("\n");
  $("command").textContent = `# after: semdir-edit invert <image> (or the "Latent file" button)\n${text}`;
}

// --------------------------------------------------------------------------------------------- downloads

async function downloadEdited() {
  try {
    const blob = await (await postJson(`api/sessions/${state.session.session}/edit`, editBody(DOWNLOAD_SCALE)))
      .blob();
    download(blob, `${state.session.name}.edited.png`);
  } catch (error) { showError(error.message); }
}

async function downloadLatent() {
  try {
    const blob = await (await api(`api/sessions/${state.session.session}/latent`)).blob();
    download(blob, state.session.latent_name);
  } catch (error) { showError(error.message); }
}

async function downloadStrip() {
  const direction = state.active || `${state.info.groups[0] || "pca"}:0`;
  const body = { ...editBody(DOWNLOAD_SCALE), direction, eps_min: SLIDER.min, eps_max: SLIDER.max, count: 7 };
  try {
    const blob = await (await postJson(`api/sessions/${state.session.session}/strip`, body)).blob();
    const img = $("strip");
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(blob);
    img.style.display = "block";
    $("strip-label").textContent = `${direction}, eps ${SLIDER.min}..${SLIDER.max}`;
    download(blob, `${state.session.name}.strip.png`);
  } catch (error) { showError(error.message); }
}

// ------------------------------------------------------------------------------------------------- wiring

function wire() {
  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("file").addEventListener("change", (e) => { uploadFile(e.target.files[0]); e.target.value = ""; });
  // Anywhere on the page: a dropped file is ours, never opened by the browser instead.
  document.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    uploadFile(e.dataTransfer.files[0]);
  });
  $("random-test").addEventListener("click", () => randomImage("test"));
  $("random-sample").addEventListener("click", () => randomImage("sample"));
  $("target").addEventListener("change", changeTarget);
  $("layer-lo").addEventListener("input", changeLayers);
  $("layer-hi").addEventListener("input", changeLayers);
  $("keep-class").addEventListener("change", () => { updateCommand(); scheduleEdit(); });
  $("reset").addEventListener("click", reset);
  $("download-png").addEventListener("click", downloadEdited);
  $("download-latent").addEventListener("click", downloadLatent);
  $("download-strip").addEventListener("click", downloadStrip);
}

wire();
loadInfo().catch((error) => showError(`cannot reach the server: ${error.message}`));
