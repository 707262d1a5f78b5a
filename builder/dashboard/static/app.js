// The dashboard: hash routes → views that read the public API with the user's token → DOM.
// The token lives in sessionStorage (this tab, this session) and is sent only in the
// Authorization header: never in a URL, a snippet or a log.
"use strict";

const TOKEN_KEY = "dreambuild.token";
const main = document.getElementById("main");
let cleanups = [];  // what the current view must stop (timers, streams) when another is shown

// --- helpers ------------------------------------------------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key in el && key !== "list") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child !== undefined && child !== null && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function token() { return sessionStorage.getItem(TOKEN_KEY); }

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}`, ...(options.headers || {}) };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.json) };
  }
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) { signOut("Your token was refused: sign in again."); throw new ApiError(401, "signed out"); }
  const text = await response.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { detail: text.slice(0, 500) }; }  // a proxy's error page
  if (!response.ok) throw new ApiError(response.status, (body && body.detail) || response.statusText);
  return body;
}

function shortId(id) { return String(id || "").replace(/^sha256:/, "").slice(0, 12); }
function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }
function seconds(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  s = Math.round(s);
  const m = Math.floor(s / 60), r = s % 60;
  return m >= 60 ? `${Math.floor(m / 60)}h${String(m % 60).padStart(2, "0")}m` : m ? `${m}m${String(r).padStart(2, "0")}s` : `${r}s`;
}
function duration(doc) {
  if (!doc.created_at) return "";
  const end = doc.completed_at ? new Date(doc.completed_at) : new Date();
  return seconds((end - new Date(doc.started_at || doc.created_at)) / 1000);
}
function statusBadge(status) { return h("span", { className: `status ${status}` }, status); }
function finished(doc) { return ["succeeded", "failed", "canceled"].includes(doc.status); }
function errorBox(error) { return h("p", { className: "error", role: "alert" }, error.message || String(error)); }
function shellQuote(text) { return `'${String(text).replace(/'/g, `'"'"'`)}'`; }

// The trainer's progress from its log lines ("step 40/400 loss … elapsed 0m12s eta 1m48s").
function progress(doc) {
  const matches = [...(doc.logs || "").matchAll(/step (\d+)\/(\d+).*?eta (?:(\d+)h)?(\d+)m(\d+)s/g)];
  if (!matches.length) return null;
  const [, step, total, hours, minutes, secs] = matches[matches.length - 1];
  return { step: +step, total: +total, eta: (+hours || 0) * 3600 + +minutes * 60 + +secs };
}

function progressBar(doc) {
  const p = progress(doc);
  const done = doc.status === "succeeded" ? 1 : p ? p.step / p.total : 0;
  const fill = h("div");
  fill.style.width = `${Math.round(done * 100)}%`;
  const label = p ? `${p.step}/${p.total}` + (finished(doc) || doc.stage !== "training" ? "" : ` · ETA ${seconds(p.eta)}`) : "";
  return h("span", { className: "progress-cell" }, h("span", { className: "progress", title: label }, fill), " ",
           h("span", { className: "muted progress-label" }, label));
}

// Server-sent events over fetch (EventSource cannot send the Authorization header). A stream
// that breaks (the network, a restart of the service) is opened again while `more()` says so.
function streamEvents(path, onEvent, more = () => true) {
  const controller = new AbortController();
  async function once() {
    const response = await fetch(path, { headers: { Authorization: `Bearer ${token()}` }, signal: controller.signal });
    if (!response.ok) throw new ApiError(response.status, response.statusText);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event: ")) event = line.slice(7);
          else if (line.startsWith("data: ")) data += line.slice(6);
        }
        if (data) onEvent(event, JSON.parse(data));
      }
    }
  }
  (async () => {
    while (!controller.signal.aborted) {
      try { await once(); } catch (error) {
        if (error.name === "AbortError" || error.status === 404 || error.status === 401) return;
        console.warn("event stream broke, opening it again:", error.message);
      }
      if (!more()) return;
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  })();
  return () => controller.abort();
}

function every(ms, fn) {
  const timer = setInterval(fn, ms);
  cleanups.push(() => clearInterval(timer));
}

// --- sign in ------------------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "#/signin";
  if (message) sessionStorage.setItem("dreambuild.message", message);
  render();
}

function signInView() {
  const input = h("input", { type: "password", id: "token", autocomplete: "off", placeholder: "your API token" });
  const problem = h("p", { className: "error", role: "alert" }, sessionStorage.getItem("dreambuild.message") || "");
  sessionStorage.removeItem("dreambuild.message");
  const form = h("form", { className: "card", id: "signin" },
    h("h1", {}, "Sign in"),
    h("label", { htmlFor: "token" }, "API token"), input,
    h("p", { className: "help" }, "The token the operator gave you. It stays in this browser tab's session."),
    h("button", { className: "primary", type: "submit" }, "Sign in"), problem);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch("/v1/trainings?limit=1", { headers: { Authorization: `Bearer ${input.value.trim()}` } });
    if (!response.ok) { problem.textContent = response.status === 401 ? "That token is not valid." : `The service answered ${response.status}.`; return; }
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    location.hash = "#/trainings";
  });
  return form;
}

// --- trainings ----------------------------------------------------------------------------

async function trainingsView() {
  const body = h("tbody");
  const table = h("table", { id: "trainings" },
    h("thead", {}, h("tr", {}, ["Training", "Model", "Status", "Stage", "Progress", "Duration", "Created"].map((t) => h("th", {}, t)))), body);
  async function refresh() {
    const page = await api("/v1/trainings?limit=100");
    body.replaceChildren(...page.results.map((doc) => h("tr", { dataset: { id: doc.id } },
      h("td", {}, h("a", { href: `#/trainings/${doc.id}` }, shortId(doc.id))),
      h("td", {}, doc.destination), h("td", {}, statusBadge(doc.status)), h("td", {}, doc.stage),
      h("td", {}, progressBar(doc)), h("td", {}, duration(doc)), h("td", { className: "muted" }, when(doc.created_at)))));
    if (!page.results.length) body.append(h("tr", {}, h("td", { colSpan: 7, className: "muted" }, "No trainings yet: start one under New training.")));
  }
  await refresh();
  every(5000, () => refresh().catch(() => {}));  // the list only; a training's own page is live
  return h("div", {}, h("h1", {}, "Trainings"), table);
}

async function trainingView(id) {
  const view = h("div", { id: "training" });
  const logs = h("pre", { id: "logs" });
  const summary = h("div", { className: "card" });
  const cancel = h("button", { id: "cancel", type: "button" }, "Cancel");
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try { show(await api(`/v1/trainings/${id}/cancel`, { method: "POST" })); } catch (error) { view.append(errorBox(error)); }
  });
  const photos = h("div", { className: "gallery", id: "photos" });
  const samples = h("div", { className: "gallery", id: "samples" }, h("p", { className: "muted" }, "When the training ends."));
  const likeness = h("div", { id: "likeness" }, h("p", { className: "muted" }, "When the training ends."));
  let samplesShown = false;
  function show(doc) {
    if (doc.status === "succeeded" && !samplesShown) {
      samplesShown = true;
      showImages(id, "samples", samples, "No samples: set validation_prompt or save_sample_prompt when training.");
      likeness.replaceChildren(likenessChart((doc.metrics || {}).likeness));
    }
    const delivery = doc.webhook_delivery;
    summary.replaceChildren(h("dl", {},
      h("dt", {}, "Status"), h("dd", { id: "status" }, statusBadge(doc.status), doc.error ? h("span", { className: "error" }, " " + doc.error) : ""),
      h("dt", {}, "Stage"), h("dd", { id: "stage" }, doc.stage),
      h("dt", {}, "Progress"), h("dd", {}, progressBar(doc)),
      h("dt", {}, "Duration"), h("dd", {}, duration(doc)),
      h("dt", {}, "Model"), h("dd", {}, doc.model_version
        ? h("a", { href: `#/models/${doc.destination}` }, `${doc.destination}:${shortId(doc.model_version)}`) : doc.destination),
      h("dt", {}, "Instance prompt"), h("dd", {}, doc.input.instance_prompt || ""),
      h("dt", {}, "Steps"), h("dd", {}, doc.input.max_train_steps ?? "default"),
      h("dt", {}, "Webhook"), h("dd", { id: "webhook" }, !doc.webhook_completed ? "none" : !delivery ? "not sent yet"
        : `${delivery.state}${delivery.status ? ` (HTTP ${delivery.status})` : ""}, ${delivery.attempts} attempt(s)`),
      h("dt", {}, "Created"), h("dd", {}, when(doc.created_at))));
    cancel.hidden = finished(doc);
    logs.textContent = doc.logs || "(no logs yet)";
    logs.scrollTop = logs.scrollHeight;
  }
  let current = await api(`/v1/trainings/${id}`);
  show(current);
  cleanups.push(streamEvents(`/v1/trainings/${id}/events`, (event, data) => { if (event === "training") show(current = data); },
                             () => current.stage !== "done"));
  showImages(id, "photos", photos, "No photos to show: instance_data was not uploaded to this service.");
  view.append(h("h1", {}, `Training ${shortId(id)}`), summary, cancel, h("h2", {}, "Photos"), photos,
              h("h2", {}, "Samples"), samples, h("h2", {}, "Likeness"), likeness, h("h2", {}, "Logs"), logs);
  return view;
}

// The likeness scores over the steps (metrics.likeness: measure_likeness): an SVG line per score,
// drawn from numbers only, and the same numbers in a table.
const SCORES = [["dino", "DINO", "#0b63ce"], ["clip_i", "CLIP-I", "#1e8e3e"], ["clip_t", "CLIP-T", "#c5221f"], ["prior_drift", "prior drift", "#6e6e73"]];

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  el.append(...children);
  return el;
}

function likenessChart(likeness) {
  const steps = (likeness && likeness.steps) || [];
  if (!steps.length) return h("p", { className: "muted" }, "Not measured: set measure_likeness when training.");
  const [width, height, pad] = [520, 220, 36];
  const last = Math.max(1, ...steps.map((e) => e.step));
  const x = (step) => pad + ((width - 2 * pad) * step) / last;
  const y = (value) => height - pad - (height - 2 * pad) * Math.max(0, Math.min(1, value));  // cosines: 0 to 1 shown
  const chart = svg("svg", { id: "likeness-chart", viewBox: `0 0 ${width} ${height}`, width, height, role: "img" },
    svg("title", {}, "Likeness scores over the training's steps"),
    svg("line", { x1: pad, y1: y(0), x2: width - pad, y2: y(0), stroke: "#d2d2d7" }),
    svg("line", { x1: pad, y1: y(1), x2: width - pad, y2: y(1), stroke: "#d2d2d7" }),
    svg("text", { x: 4, y: y(1) + 4, "font-size": 11, fill: "#6e6e73" }, "1"),
    svg("text", { x: 4, y: y(0) + 4, "font-size": 11, fill: "#6e6e73" }, "0"),
    svg("text", { x: width - pad, y: height - 8, "font-size": 11, fill: "#6e6e73", "text-anchor": "end" }, `step ${last}`));
  SCORES.forEach(([key, label, colour], i) => {
    const points = steps.filter((e) => typeof e[key] === "number");
    if (!points.length) return;
    chart.append(svg("polyline", { "data-score": key, fill: "none", stroke: colour, "stroke-width": 2, points: points.map((e) => `${x(e.step)},${y(e[key])}`).join(" ") }),
                 svg("text", { x: pad + 110 * i, y: 14, "font-size": 12, fill: colour }, label));
  });
  const kept = likeness.kept_step;
  const rows = steps.map((e) => h("tr", { className: e.step === kept ? "kept" : "" }, h("td", {}, e.step),
    ...SCORES.map(([key]) => h("td", {}, typeof e[key] === "number" ? e[key].toFixed(3) : "—"))));
  return h("div", {}, chart,
    h("table", { id: "likeness-table" }, h("thead", {}, h("tr", {}, h("th", {}, "Step"), ...SCORES.map(([, label]) => h("th", {}, label)))), h("tbody", {}, rows)),
    h("p", { className: "help" }, `DreamBooth's measures: DINO and CLIP-I, subject fidelity (generated vs your photos); CLIP-T, prompt fidelity; prior drift, the class against the base's. Evaluation took ${seconds(likeness.evaluation_seconds)}.`,
      kept !== undefined && kept !== null ? ` keep_best shipped step ${kept}.` : ""));
}

// A training's images (they need the token, which an <img> cannot send: fetched, shown as blobs).
async function showImages(id, source, into, none) {
  try {
    const list = await api(`/v1/trainings/${id}/images/${source}`);
    const images = await Promise.all(list.images.map(async (image) => {
      const response = await fetch(image.url, { headers: { Authorization: `Bearer ${token()}` } });
      if (!response.ok) throw new ApiError(response.status, `${image.name}: ${response.statusText}`);
      const url = URL.createObjectURL(await response.blob());
      cleanups.push(() => URL.revokeObjectURL(url));
      return h("img", { src: url, alt: image.name, title: image.name, className: source === "photos" ? "photo" : "" });
    }));
    into.replaceChildren(...(images.length ? images : [h("p", { className: "muted" }, none)]));
  } catch (error) {
    into.replaceChildren(errorBox(error));
  }
}

// --- new training -------------------------------------------------------------------------

function uploadWithProgress(name, blob, bar) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("POST", `/v1/uploads/${encodeURIComponent(name)}`);
    request.setRequestHeader("Authorization", `Bearer ${token()}`);
    request.upload.onprogress = (event) => { if (event.lengthComputable) bar.value = event.loaded / event.total; };
    request.onload = () => {
      const body = request.responseText ? JSON.parse(request.responseText) : {};
      if (request.status === 201) { bar.value = 1; resolve(body); } else reject(new ApiError(request.status, body.detail || request.statusText));
    };
    request.onerror = () => reject(new ApiError(0, "the upload failed: the service did not answer"));
    request.send(blob);
  });
}

async function newTrainingView() {
  const catalog = await api("/v1/catalog");
  let files = [];
  const field = (id, label, input, help) => [h("label", { htmlFor: id }, label), input, help ? h("p", { className: "help" }, help) : ""];
  const picker = h("input", { type: "file", id: "photos", multiple: true, accept: "image/*,.zip" });
  const listing = h("p", { className: "muted", id: "photo-list" }, "No photos yet.");
  const drop = h("div", { className: "drop", id: "drop" }, "Drop 5–30 photos of the subject (or one zip) here, or ", picker, listing);
  const setFiles = (chosen) => {
    files = [...chosen];
    listing.textContent = files.length ? `${files.length} file(s): ${files.map((f) => f.name).join(", ")}` : "No photos yet.";
    updateCurl();
  };
  picker.addEventListener("change", () => setFiles(picker.files));
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => { event.preventDefault(); drop.classList.remove("over"); setFiles(event.dataTransfer.files); });
  const inputs = {
    instance_prompt: h("input", { type: "text", id: "instance_prompt", value: "a photo of a cjw person", required: true }),
    class_prompt: h("input", { type: "text", id: "class_prompt", value: "a photo of a person", required: true }),
    max_train_steps: h("input", { type: "number", id: "max_train_steps", value: 2000, min: 1 }),
    lora_rank: h("input", { type: "number", id: "lora_rank", value: 0, min: 0, max: 256 }),
  };
  const prior = h("input", { type: "checkbox", id: "with_prior_preservation", checked: true });
  const trainer = h("select", { id: "trainer" }, catalog.trainers.map((t) => h("option", { value: t.version }, t.name)));
  const base = h("select", { id: "base_model" });
  const template = h("select", { id: "template" });
  const noTemplate = h("p", { className: "help", id: "no-template" });
  // The bases the chosen trainer bakes (its base_model input), and the templates that can build
  // what is trained: a LoRA only on a template baking the same base (by digest), as the API checks.
  const chosenTrainer = () => catalog.trainers.find((t) => t.version === trainer.value) || { base_digests: {} };
  function updateBases() {
    base.replaceChildren(h("option", { value: "" }, "its default base"),
      ...Object.keys(chosenTrainer().base_digests || {}).sort().map((name) => h("option", { value: name }, name)));
    updateTemplates();
  }
  function updateTemplates() {
    const chosen = chosenTrainer();
    const digest = base.value ? (chosen.base_digests || {})[base.value] : chosen.base_digest;
    const lora = Number(inputs.lora_rank.value) > 0;
    const fits = catalog.templates.filter((t) => lora ? t.builds.includes("lora") && t.base_digest === digest : t.builds.includes("full"));
    template.replaceChildren(...fits.map((t) => h("option", { value: t.version }, t.name)));
    noTemplate.textContent = fits.length ? "" : lora
      ? "No template bakes this base, so no LoRA of it can be built here: an operator adds one (dreambuild templates add)."
      : "No template builds full fine-tunes here.";
  }
  trainer.addEventListener("change", updateBases);
  base.addEventListener("change", updateTemplates);
  inputs.lora_rank.addEventListener("input", updateTemplates);
  updateBases();
  const model = h("input", { type: "text", id: "model", placeholder: "owner/name", required: true });
  const webhook = h("input", { type: "url", id: "webhook", placeholder: "https://example.com/hook (optional)" });
  const bar = h("progress", { id: "upload-progress", max: 1, value: 0 });
  const curl = h("pre", { className: "snippet", id: "curl" });
  const problem = h("div", { id: "new-problem" });
  let uploaded = null;

  function request(instanceData) {
    const body = {
      input: { instance_prompt: inputs.instance_prompt.value, class_prompt: inputs.class_prompt.value,
               max_train_steps: Number(inputs.max_train_steps.value), with_prior_preservation: prior.checked,
               instance_data: instanceData },
      model: model.value, trainer_version: trainer.value, template_version: template.value,
    };
    if (base.value) body.input.base_model = base.value;
    if (Number(inputs.lora_rank.value) > 0) body.input.lora_rank = Number(inputs.lora_rank.value);
    if (webhook.value) body.webhook_completed = webhook.value;
    return body;
  }
  function updateCurl() {
    const data = uploaded ? uploaded.url : "<the URL of your zip, from POST /v1/uploads/photos.zip>";
    curl.textContent = `curl -X POST ${location.origin}/v1/trainings \\\n  -H "Authorization: Bearer $DREAMBUILD_API_TOKEN" \\\n`
      + `  -H "Content-Type: application/json" \\\n  -d ${shellQuote(JSON.stringify(request(data), null, 2))}`;
  }
  const form = h("form", { className: "card", id: "new-training" },
    drop, bar,
    field("instance_prompt", "Instance prompt", inputs.instance_prompt, "Names the subject with a rare identifier (cjw)."),
    field("class_prompt", "Class prompt", inputs.class_prompt, "The subject's class, without the identifier."),
    field("max_train_steps", "Steps", inputs.max_train_steps),
    field("with_prior_preservation", "Prior preservation", prior, "Also train on generated images of the class, so that the "
          + "model keeps knowing the class (slower; recommended for people)."),
    field("trainer", "Trainer", trainer),
    field("base_model", "Base model", base, "What is trained: the trainer's default base or another it bakes (e.g. sdxl, flux-dev)."),
    field("lora_rank", "LoRA rank", inputs.lora_rank, "0: a full fine-tune; above 0: LoRA DreamBooth, small adapters of this rank "
          + "(e.g. 16) on a template baking the base. FLUX bases train LoRA only."),
    field("template", "Template", template), noTemplate,
    field("model", "Destination model", model, "owner/name: the new version is pushed there."),
    field("webhook", "Webhook URL", webhook, "Called with the training when it completes."),
    h("p", {}, h("button", { className: "primary", type: "submit", id: "start" }, "Start training")), problem);
  form.addEventListener("input", updateCurl);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    problem.replaceChildren();
    if (!files.length) { problem.append(errorBox(new Error("Add the subject's photos first."))); return; }
    try {
      const single = files.length === 1 && /\.zip$/i.test(files[0].name);
      const blob = single ? files[0] : await storedZip(files);
      uploaded = await uploadWithProgress(single ? files[0].name.replace(/[^\w.-]/g, "_") : "photos.zip", blob, bar);
      updateCurl();
      const created = await api("/v1/trainings", { method: "POST", json: request(uploaded.url) });
      location.hash = `#/trainings/${created.id}`;
    } catch (error) {
      problem.append(errorBox(error));
    }
  });
  updateCurl();
  return h("div", {}, h("h1", {}, "New training"), form, h("h2", {}, "The same request with curl"), curl);
}

// --- models and versions ------------------------------------------------------------------

async function modelsView() {
  const page = await api("/v1/models");
  return h("div", {}, h("h1", {}, "Models"), h("table", { id: "models" },
    h("thead", {}, h("tr", {}, ["Model", "Latest version", "Built"].map((t) => h("th", {}, t)))),
    h("tbody", {}, page.results.length ? page.results.map((m) => h("tr", {},
      h("td", {}, h("a", { href: `#/models/${m.owner}/${m.name}` }, `${m.owner}/${m.name}`)),
      h("td", {}, m.latest_version ? shortId(m.latest_version.id) : ""),
      h("td", { className: "muted" }, m.latest_version ? when(m.latest_version.created_at) : "")))
      : h("tr", {}, h("td", { colSpan: 3, className: "muted" }, "No models yet: a training's version appears here.")))));
}

async function modelView(owner, name) {
  const [versions, catalog] = await Promise.all([api(`/v1/models/${owner}/${name}/versions`), api("/v1/catalog")]);
  const templates = Object.fromEntries(catalog.templates.map((t) => [t.version, t.name]));
  return h("div", {}, h("h1", {}, `${owner}/${name}`), h("table", { id: "versions" },
    h("thead", {}, h("tr", {}, ["Version", "Template", "Training", "Notes", "Created", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, versions.results.map((v) => h("tr", {},
      h("td", { title: v.id }, shortId(v.id)), h("td", {}, templates[v.template_version] || shortId(v.template_version)),
      h("td", {}, v.training_id ? h("a", { href: `#/trainings/${v.training_id}` }, shortId(v.training_id)) : ""),
      h("td", {}, v.notes || ""), h("td", { className: "muted" }, when(v.created_at)),
      h("td", {}, h("a", { href: `#/try/${owner}/${name}/${v.id}` }, "Try it")))))));
}

// --- try it: a form from the version's Cog schema ----------------------------------------

function inputSchema(version) {
  const schemas = (version.openapi_schema.components || {}).schemas || {};
  const resolve = (prop) => {
    const ref = prop.$ref || (prop.allOf && prop.allOf[0] && prop.allOf[0].$ref);
    return ref ? { ...schemas[ref.split("/").pop()], ...prop } : prop;
  };
  const input = schemas.Input || { properties: {} };
  return Object.entries(input.properties || {}).map(([name, prop]) => [name, resolve(prop), (input.required || []).includes(name)])
    .sort((a, b) => (a[1]["x-order"] ?? 0) - (b[1]["x-order"] ?? 0));
}

function control(name, prop) {
  const id = `in-${name}`;
  const value = prop.default;
  if (prop.enum) {
    return h("select", { id, name }, prop.enum.map((option) => h("option", { value: option, selected: option === value }, option)));
  }
  if (prop.type === "boolean") return h("input", { type: "checkbox", id, name, checked: Boolean(value) });
  if (prop.type === "integer" || prop.type === "number") {
    const step = prop.type === "integer" ? 1 : "any";
    const number = h("input", { type: "number", id, name, step, min: prop.minimum, max: prop.maximum, value: value ?? "" });
    if (prop.minimum === undefined || prop.maximum === undefined) return number;
    const slider = h("input", { type: "range", min: prop.minimum, max: prop.maximum, step: prop.type === "integer" ? 1 : (prop.maximum - prop.minimum) / 100,
                                value: value ?? prop.minimum, "aria-label": name });
    slider.addEventListener("input", () => { number.value = slider.value; });
    number.addEventListener("input", () => { slider.value = number.value; });
    return h("span", {}, slider, number);
  }
  if (prop.format === "uri") return h("input", { type: "file", id, name });
  const long = /prompt/.test(name);
  return long ? h("textarea", { id, name, rows: 2 }, value ?? "") : h("input", { type: "text", id, name, value: value ?? "" });
}

async function readInput(fields) {
  const input = {};
  for (const [name, prop, required] of fields) {
    const el = document.getElementById(`in-${name}`);
    if (prop.format === "uri") {
      if (el.files.length) {
        const form = new FormData();
        form.append("content", el.files[0]);
        input[name] = (await api("/v1/files", { method: "POST", body: form })).urls.get;
      }
    } else if (prop.type === "boolean") {
      input[name] = el.checked;
    } else if (el.value === "") {
      if (required) throw new Error(`${name} is required`);
    } else if (prop.type === "integer" || prop.type === "number") {
      input[name] = Number(el.value);
    } else {
      input[name] = el.value;
    }
  }
  return input;
}

function snippets(reference, input) {
  const python = `import replicate\n\nclient = replicate.Client(base_url="${location.origin}")  # the token: $REPLICATE_API_TOKEN\n`
    + `output = client.run(\n    "${reference}",\n    input=${JSON.stringify(input, null, 4).replace(/\n/g, "\n    ")
      .replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False").replace(/\bnull\b/g, "None")},\n)\nprint(output)`;
  const curl = `curl -X POST ${location.origin}/v1/predictions \\\n  -H "Authorization: Bearer $DREAMBUILD_API_TOKEN" \\\n`
    + `  -H "Content-Type: application/json" -H "Prefer: wait" \\\n  -d ${shellQuote(JSON.stringify({ version: reference, input }, null, 2))}`;
  return [python, curl];
}

function outputsOf(prediction) {
  const output = prediction.output;
  return (Array.isArray(output) ? output : output ? [output] : []).filter((o) => typeof o === "string");
}

async function tryView(owner, name, versionId) {
  const version = await api(`/v1/models/${owner}/${name}/versions/${versionId}`);
  const reference = `${owner}/${name}:${version.id}`;
  const fields = inputSchema(version);
  const gallery = h("div", { className: "gallery", id: "gallery" });
  const result = h("div", { id: "result" });
  const python = h("pre", { className: "snippet", id: "python-snippet" });
  const curl = h("pre", { className: "snippet", id: "curl-snippet" });
  const run = h("button", { className: "primary", type: "submit", id: "run" }, "Run");
  const form = h("form", { className: "card", id: "try" },
    fields.map(([field, prop, required]) => [
      h("label", { htmlFor: `in-${field}` }, field + (required ? " *" : "")), control(field, prop),
      prop.description ? h("p", { className: "help" }, prop.description) : ""]),
    h("p", {}, run));
  if (!fields.length) form.prepend(h("p", { className: "muted" }, "This version recorded no input schema."));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    run.disabled = true;
    result.replaceChildren(h("p", { className: "muted" }, "Running…"));
    gallery.replaceChildren();
    try {
      const input = await readInput(fields);
      [python.textContent, curl.textContent] = snippets(reference, input);
      let prediction = await api("/v1/predictions", { method: "POST", json: { version: reference, input } });
      while (!finished(prediction)) {
        await new Promise((resolve) => setTimeout(resolve, 1000));
        prediction = await api(`/v1/predictions/${prediction.id}`);
      }
      const seed = (prediction.logs || "").match(/seed[:= ]+(\d+)/i);
      result.replaceChildren(h("dl", {},
        h("dt", {}, "Status"), h("dd", { id: "prediction-status" }, statusBadge(prediction.status), prediction.error ? h("span", { className: "error" }, " " + prediction.error) : ""),
        h("dt", {}, "Seed"), h("dd", { id: "seed" }, input.seed ?? (seed ? seed[1] : "random")),
        h("dt", {}, "Predict time"), h("dd", { id: "predict-time" }, seconds((prediction.metrics || {}).predict_time)),
        h("dt", {}, "Prediction"), h("dd", {}, prediction.id)));
      gallery.replaceChildren(...outputsOf(prediction).map((url) => h("a", { href: url, target: "_blank" }, h("img", { src: url, alt: "output" }))));
    } catch (error) {
      result.replaceChildren(errorBox(error));
    } finally {
      run.disabled = false;
    }
  });
  [python.textContent, curl.textContent] = snippets(reference, {});
  return h("div", {}, h("h1", {}, `Try ${owner}/${name}:${shortId(version.id)}`), form, result, gallery,
           h("h2", {}, "With Replicate's Python client"), python, h("h2", {}, "With curl"), curl);
}

// --- predictions --------------------------------------------------------------------------

async function predictionsView() {
  const page = await api("/v1/predictions");
  return h("div", {}, h("h1", {}, "Predictions"), h("table", { id: "predictions" },
    h("thead", {}, h("tr", {}, ["", "Prediction", "Model", "Status", "Time", "Created"].map((t) => h("th", {}, t)))),
    h("tbody", {}, page.results.length ? page.results.map((p) => {
      const first = outputsOf(p)[0];
      return h("tr", {},
        h("td", {}, first ? h("a", { href: first, target: "_blank" }, h("img", { className: "thumb", src: first, alt: "output" })) : ""),
        h("td", {}, h("a", { href: `#/predictions/${p.id}` }, shortId(p.id))), h("td", {}, p.model || ""),
        h("td", {}, statusBadge(p.status), p.error ? h("div", { className: "error" }, p.error) : ""),
        h("td", {}, seconds((p.metrics || {}).predict_time)), h("td", { className: "muted" }, when(p.created_at)));
    }) : h("tr", {}, h("td", { colSpan: 6, className: "muted" }, "No predictions yet: try a model.")))));
}

async function predictionView(id) {
  const p = await api(`/v1/predictions/${id}`);
  const [owner, name] = (p.model || "/").split("/");
  const version = p.version ? h("a", { href: `#/try/${owner}/${name}/${p.version}` }, `${p.model}:${shortId(p.version)}`) : (p.model || "");
  return h("div", {}, h("h1", {}, `Prediction ${shortId(p.id)}`),
    h("dl", { id: "prediction" },
      h("dt", {}, "Status"), h("dd", { id: "prediction-status" }, statusBadge(p.status)),
      ...(p.error ? [h("dt", {}, "Error"), h("dd", { id: "prediction-error", className: "error" }, p.error)] : []),
      h("dt", {}, "Version"), h("dd", {}, version),
      h("dt", {}, "Predict time"), h("dd", {}, seconds((p.metrics || {}).predict_time)),
      h("dt", {}, "Created"), h("dd", {}, when(p.created_at)),
      h("dt", {}, "Input"), h("dd", {}, h("pre", {}, JSON.stringify(p.input, null, 2)))),
    h("div", { className: "gallery" }, ...outputsOf(p).map((url) => h("a", { href: url, target: "_blank" }, h("img", { src: url, alt: "output" })))),
    h("h2", {}, "Logs"), h("pre", { id: "prediction-logs" }, p.logs || ""));
}

// --- routing ------------------------------------------------------------------------------

const ROUTES = [
  [/^#\/trainings\/([\w-]+)$/, trainingView],
  [/^#\/trainings$/, trainingsView],
  [/^#\/new$/, newTrainingView],
  [/^#\/models\/([\w.-]+)\/([\w.-]+)$/, modelView],
  [/^#\/models$/, modelsView],
  [/^#\/try\/([\w.-]+)\/([\w.-]+)\/([\w:]+)$/, tryView],
  [/^#\/predictions\/([\w-]+)$/, predictionView],
  [/^#\/predictions$/, predictionsView],
];

async function render() {
  cleanups.forEach((stop) => stop());
  cleanups = [];
  const signedIn = Boolean(token());
  document.getElementById("nav").hidden = !signedIn;
  if (!signedIn) { main.replaceChildren(signInView()); return; }
  const hash = location.hash === "" || location.hash === "#/signin" ? "#/trainings" : location.hash;
  const route = ROUTES.find(([pattern]) => pattern.test(hash));
  if (!route) { main.replaceChildren(h("p", {}, "Nothing here. ", h("a", { href: "#/trainings" }, "Trainings"))); return; }
  main.replaceChildren(h("p", { className: "muted" }, "Loading…"));
  try {
    main.replaceChildren(await route[1](...hash.match(route[0]).slice(1)));
  } catch (error) {
    if (error.status !== 401) main.replaceChildren(errorBox(error));
  }
}

document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", render);
render();
