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
  editClass: null,    // Class the image is edited as: its class sliders and the lock (default: the predicted one).
  stripSeq: 0,        // Bumped by Reset and new images: a strip answer from before is not shown.
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

function newProgressId() {
  const bytes = new Uint8Array(12); // crypto.getRandomValues also works where randomUUID does not (plain http).
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

// Poll the server for the steps of the inversion running under `id` while its request waits; returns a stop
// function. Total 0 (waiting for the networks, or an encoder method, which takes no steps): an indeterminate bar.
function watchProgress(id) {
  const row = $("progress-row");
  const bar = $("progress");
  const text = $("progress-text");
  bar.removeAttribute("value");
  text.textContent = "";
  row.hidden = false;
  let polling = false;
  let stopped = false;
  const timer = setInterval(async () => {
    if (polling) return;
    polling = true;
    try {
      const response = await fetch(`api/progress/${id}`);
      if (response.ok && !stopped) {
        const { done, total } = await response.json();
        if (total > 0) {
          bar.max = total;
          bar.value = done;
          text.textContent = `step ${done} / ${total}`;
        }
      }
    } catch (_) { /* The upload's own answer reports errors. */ } finally { polling = false; }
  }, 250);
  return () => { stopped = true; clearInterval(timer); row.hidden = true; };
}

async function runLoad(label, request, progressId = null) {
  showError("");
  setInputsEnabled(false);
  setStatus(label, true);
  const stopProgress = progressId ? watchProgress(progressId) : () => {};
  try {
    const session = await (await request()).json();
    setSession(session);
    setStatus(`${session.name}: ${session.source === "sample" ? "generated sample" : "inverted in " +
              fmt(session.seconds, 2) + " s"}`);
  } catch (error) {
    setStatus(state.session ? `still editing ${state.session.name}` : "Load an image to start.");
    showError(error.message);
  } finally {
    stopProgress();
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
  const progress = newProgressId();
  params.set("progress", progress);
  runLoad(`inverting ${file.name}…`, () => api(`api/sessions/upload?${params}`, {
    method: "POST", headers: { "Content-Type": "application/octet-stream" }, body: file }), progress);
}

function randomImage(source) {
  const params = inversionQuery();
  params.set("source", source);
  const progress = source === "test" ? newProgressId() : null; // A sample is drawn, not inverted.
  if (progress) params.set("progress", progress);
  runLoad(source === "test" ? "inverting a test image…" : "drawing a sample…",
          () => api(`api/sessions/random?${params}`, { method: "POST" }), progress);
}

function setSession(session) {
  state.session = session;
  state.shifts = {};
  state.active = null;
  state.editClass = session.class_name;
  $("placeholder").hidden = true;
  $("images").hidden = false;
  $("domain-img").src = session.domain;
  $("recon-img").src = session.reconstruction;
  $("edited-img").src = session.reconstruction;
  $("class").textContent = `${session.class_name} (${(100 * session.confidence).toFixed(1)}%)`;
  const editClass = $("edit-class");
  editClass.replaceChildren(...state.info.class_names.map(
    (c) => new Option(c === session.class_name ? `${c} (predicted)` : c, c, false, c === session.class_name)));
  $("edit-class-row").hidden = false;
  $("edited-class").textContent = "not edited yet";
  $("quality").textContent = session.psnr === null ? "exact (generated code)"
    : `PSNR ${fmt(session.psnr, 2)} dB · SSIM ${fmt(session.ssim, 3)}`;
  $("inversion").textContent = session.source === "sample" ? "none"
    : `${session.method}${session.steps ? `, ${session.steps} steps` : ""}, ${fmt(session.seconds, 2)} s`;
  const notes = $("notes");
  notes.replaceChildren(...session.notes.map((n) => Object.assign(document.createElement("li"), { textContent: n })));
  clearStrip();
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
  const change = d.change === undefined ? "" : `; mean pixel change at |eps| 3: ${Number(d.change).toFixed(3)}`;
  return { label: d.label, title: `${spec}: ${d.label} (r=${Number(d.r).toFixed(2)})${top ? "; " + top : ""}${change}` };
}

function makeSlider(spec, text, title) {
  const row = document.createElement("div");
  row.className = "slider";
  row.dataset.spec = spec;
  const label = document.createElement("label");
  label.title = title;
  label.append(document.createElement("b"), document.createElement("span"));
  const input = Object.assign(document.createElement("input"), { type: "range", value: 0, ...SLIDER });
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
  setSliderLabel(row, spec, text);
  return row;
}

function setSliderLabel(row, spec, text) {
  const label = row.querySelector("label");
  label.firstChild.textContent = spec;
  label.lastChild.textContent = text ? ` · ${text}` : "";
  row.querySelector("input").setAttribute("aria-label", text ? `${spec} · ${text}` : spec);
}

function setActive(spec) {
  state.active = spec;
  for (const row of document.querySelectorAll(".slider")) row.classList.toggle("active", row.dataset.spec === spec);
}

// Measured descriptions repeat within a set ("ink +" five times): the second and later get "(2)", "(3)", ... so
// that every label of a group reads differently, besides its direction id.
function numbered(labels) {
  const seen = {};
  return labels.map((label) => {
    if (!label) return label;
    seen[label] = (seen[label] || 0) + 1;
    return seen[label] > 1 ? `${label} (${seen[label]})` : label;
  });
}

// The spec a slider of `group` sends: the class sets name the class when it is not the predicted one, so that the
// command line (apply takes the latent file's class) picks the same set.
function sliderSpec(group, k) {
  const perClass = CLASS_GROUPS.includes(group);
  return perClass && state.editClass !== state.session.class_name ? `${group}:${k}@${state.editClass}` : `${group}:${k}`;
}

function fillGroup(box, group) {
  const { info } = state;
  const perClass = CLASS_GROUPS.includes(group);
  // No per-class PCA for a class the generator never drew: the group stays empty.
  box.hidden = group === "cpca" && !(info.cpca_classes || []).includes(state.editClass);
  if (box.hidden) { box.replaceChildren(); return; }
  const heading = document.createElement("h3");
  heading.textContent = GROUP_TITLES[group] + (perClass ? ` (${state.editClass})` : "");
  const described = [];
  for (let k = 0; k < info.k[group]; k++) described.push(describe(perClass ? `${group}:${k}@${state.editClass}` : `${group}:${k}`));
  const labels = numbered(described.map((d) => d.label));
  box.replaceChildren(heading, ...described.map((d, k) => makeSlider(sliderSpec(group, k), labels[k], d.title)));
}

function buildSliders() {
  const { info } = state;
  const groups = $("groups");
  groups.replaceChildren();
  for (const group of info.groups) {
    const box = document.createElement("div");
    box.className = "group";
    box.dataset.group = group;
    groups.append(box);
    fillGroup(box, group);
  }
  // Class boundary: towards any class but the one the image is edited as.
  $("boundary").hidden = !info.boundary;
  state.target = null;
  $("boundary-slider").replaceChildren(makeSlider("to:", "", "move across the boundary between the image's class "
    + "and the target class"));
  buildTargets();
}

function buildTargets() {
  const target = $("target");
  const others = state.info.class_names.filter((c) => c !== state.editClass);
  const keep = others.includes(state.target) ? state.target : others[0];
  target.replaceChildren(...others.map((c) => new Option(c, c, false, c === keep)));
  changeTarget();
}

// The class the image is edited as changed: its class sets replace the old ones (their shifts are dropped: they
// were another class's directions), the boundary menu leaves it out, and the edit follows.
function changeEditClass() {
  state.editClass = $("edit-class").value;
  for (const spec of Object.keys(state.shifts)) {
    if (CLASS_GROUPS.some((g) => spec.startsWith(`${g}:`))) delete state.shifts[spec];
  }
  if (state.active && CLASS_GROUPS.some((g) => state.active.startsWith(`${g}:`))) setActive(null);
  for (const box of document.querySelectorAll("#groups .group")) {
    if (CLASS_GROUPS.includes(box.dataset.group)) fillGroup(box, box.dataset.group);
  }
  buildTargets();
  scheduleEdit();
  updateCommand();
}

function changeTarget() {
  const row = $("boundary-slider").firstChild;
  const oldSpec = row.dataset.spec;
  state.target = $("target").value;
  const newSpec = `to:${state.target}`;
  row.dataset.spec = newSpec;
  setSliderLabel(row, newSpec, "");
  if (state.active === oldSpec) setActive(newSpec);
  if (oldSpec !== newSpec && oldSpec in state.shifts) { // Only a moved boundary slider changes the edit.
    state.shifts[newSpec] = state.shifts[oldSpec];
    delete state.shifts[oldSpec];
    scheduleEdit();
    updateCommand();
  }
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

function clearStrip() {
  state.stripSeq++;
  const img = $("strip");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.removeAttribute("src");
  img.style.display = "none";
  $("strip-label").textContent = "";
}

// Back to the unedited image (the "edit as" class stays: it is a choice, not an edit); the strip showed an edit.
function reset() {
  for (const input of document.querySelectorAll(".slider input")) input.value = 0;
  for (const output of document.querySelectorAll(".slider output")) output.textContent = "0.00";
  state.shifts = {};
  setActive(null);
  resetLayers();
  clearStrip();
  scheduleEdit();
  updateCommand();
}

// ----------------------------------------------------------------------------------------------- editing

function editBody(scale = 1) {
  return { shifts: { ...state.shifts }, layers: layersSpec(), scale, keep_class: $("keep-class").checked,
    class_name: state.editClass };
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
      // Decode before the swap: the shown image never blanks while the next one loads.
      const url = URL.createObjectURL(blob);
      const next = new Image();
      next.src = url;
      await next.decode().catch(() => {});
      // Meanwhile a newer edit was shown, or another image loaded: this one is stale.
      if (state.shownSeq !== seq || state.session?.session !== sessionId) { URL.revokeObjectURL(url); return; }
      if (edited) $("edited-class").textContent = `${decodeURIComponent(edited)} (${(100 * confidence).toFixed(1)}%)`;
      if (state.editedUrl) URL.revokeObjectURL(state.editedUrl);
      state.editedUrl = url;
      $("edited-img").src = url;
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

// The command box: lines of tokens (each a nowrap span, so the box wraps only between tokens) or comments.
function renderCommand(lines) {
  const nodes = [];
  lines.forEach((line, i) => {
    if (i) nodes.push(document.createTextNode("\n"));
    if (typeof line === "string") {
      nodes.push(Object.assign(document.createElement("span"), { className: "comment", textContent: line }));
      return;
    }
    line.forEach((token, j) => {
      if (j) nodes.push(document.createTextNode(" "));
      nodes.push(Object.assign(document.createElement("span"), { className: "tok", textContent: token }));
    });
  });
  $("command").replaceChildren(...nodes);
}

function updateCommand() {
  const { info, session } = state;
  if (!session) return;
  const specs = Object.keys(state.shifts);
  if (specs.length === 0) {
    renderCommand(["# no edit yet: move a slider to see the equivalent semdir-edit apply command"]);
    return;
  }
  const base = ["semdir-edit", "apply", shellQuote(session.latent_name)];
  const extra = [];
  const layers = layersSpec();
  if (layers !== null) extra.push("--layers", layers);
  if (info.weights !== "weights/fashion_mnist") extra.push("--weights", shellQuote(info.weights));
  // apply walks class directions class-locked unless told --keep none, the others only with --keep class.
  const locked = $("keep-class").checked;
  const keep = (spec) => {
    if (spec.startsWith("to:")) return [];
    if (spec.startsWith("class:")) return locked ? [] : ["--keep", "none"];
    return locked ? ["--keep", "class"] : [];
  };
  const line = (spec, eps) => [...base, "--direction", shellQuote(spec), "--eps", String(eps), ...keep(spec),
    ...extra, "-o", shellQuote(`${session.name}.edited.png`)];
  const lines = ["# after: semdir-edit invert <image> (or the \"Latent file\" button)"];
  if (state.editClass !== session.class_name && locked && specs.some((s) => !s.startsWith("to:"))) {
    lines.push(`# edited as ${state.editClass} here; apply's class lock keeps the latent file's class `
      + `(${session.class_name}), so its image can differ`);
  }
  if (specs.length > 1) lines.push(`# apply takes one direction at a time; this edit adds ${specs.length}:`);
  for (const spec of specs) lines.push(line(spec, state.shifts[spec]));
  renderCommand(lines);
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
    const seq = state.stripSeq;
    const blob = await (await postJson(`api/sessions/${state.session.session}/strip`, body)).blob();
    download(blob, `${state.session.name}.strip.png`);
    if (seq !== state.stripSeq) return; // Reset (or another image) meanwhile: the strip would be stale.
    const img = $("strip");
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = URL.createObjectURL(blob);
    img.style.display = "block";
    $("strip-label").textContent = `${direction}, eps ${SLIDER.min}..${SLIDER.max}`;
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
  $("edit-class").addEventListener("change", changeEditClass);
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
