// The upload page: pick or drop images, each is POSTed to /v1/captions on its own
// (the server batches concurrent requests), and its card shows the caption, how far to
// trust it, and, for an image unlike the training data, what the CNN sees instead.
// Cards stay in the order the files were picked. No framework, no CDN: this file is the
// whole client. Text from the server is always inserted with textContent, never as HTML.
"use strict";

const MAX_PARALLEL = 4;
const LABELS = 3; // ImageNet classes asked for per image (shown when an image is out of domain)
const MAX_CAPTIONS = 10; // the most captions per image the API gives (captioner.options.NUM_CAPTIONS)
// Confidence words: "high" from HIGH up, "medium" from MEDIUM up, else "low".
const HIGH = 0.8;
const MEDIUM = 0.5;
// Error codes of a file that is not a readable image (its preview is replaced by a placeholder).
const UNREADABLE = new Set(["unsupported_image", "unreadable_image", "empty_image"]);
const CSV_COLUMNS = ["file", "caption", "score", "confidence", "in_domain", "domain_distance", "labels"];

const $ = (id) => document.getElementById(id);
const queue = [];
const entries = []; // one per picked file, in picked order: {name, card, item}
let running = 0;
let maxBeam = 5;
let trainedOn = ""; // "emoji scenes: ..." from /v1/model

// ------------------------------------------------------------------ small helpers
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const grouped = new Intl.NumberFormat("en");

// 40000000 -> "40 million", 2500000 -> "2.5 million", 250000 -> "250,000".
function formatCount(n) {
  if (n >= 1e6 && Number.isInteger(n / 1e5)) return `${grouped.format(n / 1e6)} million`;
  return grouped.format(n);
}

// Long numbers inside a server message, readable ("the limit of 40000000" -> "40 million");
// sizes such as "1200x1000" are left as they are.
function formatNumbers(text) {
  return text.replace(/(?<![\w.,])\d{5,}(?![\w.,])/g, (digits) => formatCount(Number(digits)));
}

// 33554432 -> "32 MiB", 65536 -> "64 KiB"
function formatBytes(n) {
  const [unit, size] = n >= 2 ** 20 ? ["MiB", 2 ** 20] : n >= 1024 ? ["KiB", 1024] : ["bytes", 1];
  return `${grouped.format(Math.round((n / size) * 10) / 10)} ${unit}`;
}

function percent(p) { return `${Math.round(p * 100)} %`; }

function confidenceWord(c) { return c >= HIGH ? "high" : c >= MEDIUM ? "medium" : "low"; }

function apiHeaders() {
  const key = sessionStorage.getItem("captioner-api-key") || $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function setStatus(text) { $("status").textContent = text; }

// ------------------------------------------------------------------ cards
function placeholder(file) {
  const box = el("div", "preview placeholder");
  const ext = (file.name.match(/\.([A-Za-z0-9]{1,5})$/) || [])[1];
  box.append(el("span", "ext", ext ? ext.toUpperCase() : "FILE"), el("span", "why", "no preview"));
  return box;
}

function addCard(file) {
  const li = el("li", "card");
  li.dataset.state = "pending";
  const img = el("img", "preview");
  img.alt = "";  // the file name is the card's text; the picture is its preview
  img.src = URL.createObjectURL(file);
  img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
  img.addEventListener("error", () => { URL.revokeObjectURL(img.src); img.replaceWith(placeholder(file)); },
    { once: true });
  const body = el("div", "body");
  body.append(el("p", "name", file.name), el("p", "caption", "captioning…"));
  li.append(img, body);
  $("results").append(li);
  return li;
}

// [nodes before the caption (the out-of-domain badge and what the CNN sees), nodes after it (confidence)]
function trustLines(item) {
  const notes = [];
  const after = [];
  if (item.in_domain === false) {
    const badge = el("p", "badge", "Unlike the training images");
    const short = trainedOn.split(":")[0];
    let text = "outside what this model was trained on" + (short ? ` (${short})` : "");
    if (item.labels && item.labels.length) {
      text += "; the CNN sees: " + item.labels.map((l) => `${l.name} ${percent(l.probability)}`).join(", ");
    }
    const box = el("div", "ood");
    box.setAttribute("role", "note");
    box.append(badge, el("p", "sees", text));
    notes.push(box);
  }
  if (typeof item.confidence === "number") {
    const row = el("p", "confidence");
    row.dataset.level = confidenceWord(item.confidence);
    const meter = el("meter");
    Object.assign(meter, { min: 0, max: 1, low: MEDIUM, high: HIGH, optimum: 1, value: item.confidence });
    meter.setAttribute("aria-hidden", "true"); // the words beside it say the same
    row.append(el("span", "words", `${confidenceWord(item.confidence)} confidence · ${percent(item.confidence)}`), meter);
    after.push(row);
  }
  return [notes, after];
}

function showCaption(card, item) {
  card.dataset.state = "done";
  if (item.in_domain === false) card.dataset.domain = "out";
  const caption = card.querySelector(".caption");
  caption.textContent = item.caption;
  if (!item.caption) {
    // The model gave every word a low probability, so it says nothing rather than guess.
    caption.textContent = "no caption: the model is unsure of every word";
    caption.dataset.empty = "true";
  }
  if (item.caption && item.attention) attentionWords(card, caption, item.attention);
  const [notes, confidence] = trustLines(item);
  caption.before(...notes);
  caption.after(...confidence);
  // the K best go after the caption and its confidence
  if (item.candidates && item.candidates.length > 1) [caption, ...confidence].pop().after(candidateList(item));
  const meta = el("p", "meta", `score ${item.score.toFixed(2)} · ${Math.round(item.time_ms)} ms`);
  const copy = el("button", "copy", "Copy caption");
  copy.type = "button";
  copy.setAttribute("aria-label", `Copy the caption of ${card.querySelector(".name").textContent}`);
  copy.addEventListener("click", () => copyCaption(copy, item.caption, caption));
  const actions = el("div", "card-actions");
  actions.append(copy);
  card.querySelector(".body").append(meta, actions);
}

// The K best captions (num_captions), best first, each with its confidence (else its score).
function candidateList(item) {
  const box = el("div", "candidates");
  box.append(el("p", "candidates-title", `${item.candidates.length} best captions`));
  const list = el("ol");
  for (const c of item.candidates) {
    const li = el("li", "candidate");
    const how = typeof c.confidence === "number"
      ? `${confidenceWord(c.confidence)} confidence · ${percent(c.confidence)}`
      : `score ${c.score.toFixed(2)}`;
    li.append(el("span", "text", c.caption || "(no caption)"), " ", el("span", "how", how));
    list.append(li);
  }
  box.append(list);
  return box;
}

// ------------------------------------------------------------------ attention maps
// The caption as words; pointing at (or tapping, or focusing) a word draws where the model
// looked for it over the preview: the h x w grid, smoothly upscaled, over the image's
// centre square (the part the model saw: its shorter side, centred).
function attentionWords(card, caption, attention) {
  const spans = attention.filter((a) => a.word !== "<end>").map((a) => {
    const span = el("span", "word", a.word);
    span.tabIndex = 0;
    const show = () => drawAttention(card, span, a.attention);
    span.addEventListener("mouseenter", show);
    span.addEventListener("focus", show);
    span.addEventListener("click", show);
    return span;
  });
  caption.replaceChildren(...spans.flatMap((s, i) => (i ? [" ", s] : [s])));
}

function drawAttention(card, span, grid) {
  const img = card.querySelector("img.preview");
  if (!img || !img.naturalWidth) return;
  card.querySelectorAll(".caption .word").forEach((w) => { w.dataset.active = String(w === span); });
  let canvas = card.querySelector("canvas.heat");
  if (!canvas) { canvas = el("canvas", "heat"); img.after(canvas); }
  const rows = grid.length, cols = grid[0].length;
  const scale = Math.min(img.clientWidth / img.naturalWidth, img.clientHeight / img.naturalHeight);
  const w = img.naturalWidth * scale, h = img.naturalHeight * scale, side = Math.min(w, h);
  Object.assign(canvas.style, {
    left: `${img.offsetLeft + (img.clientWidth - side) / 2}px`, top: `${img.offsetTop + (img.clientHeight - side) / 2}px`,
    width: `${side}px`, height: `${side}px`,
  });
  canvas.width = cols; canvas.height = rows;
  const ctx = canvas.getContext("2d");
  const data = ctx.createImageData(cols, rows);
  const most = Math.max(...grid.flat()) || 1;
  grid.flat().forEach((v, i) => { data.data.set([230, 30, 30, Math.round(200 * v / most)], 4 * i); });
  ctx.putImageData(data, 0, 0);
  canvas.dataset.word = span.textContent;
}

// The error sentence names the file once: the name line moves into it, and the server's
// "name: " prefix (the name as the server cleaned it, e.g. shortened) is left out.
function showError(card, detail, code, serverName) {
  card.dataset.state = "error";
  const name = card.querySelector(".name");
  const text = name.textContent;
  const prefix = [serverName, text].find((n) => n && detail.startsWith(n + ": "));
  const message = prefix ? detail.slice(prefix.length + 2) : detail;
  const caption = card.querySelector(".caption");
  name.remove();
  caption.replaceChildren(el("strong", "name", text), ` could not be captioned: ${formatNumbers(message)}`);
  caption.setAttribute("role", "alert");
  if (code) card.querySelector(".body").append(el("p", "meta", `error ${code}`));
  // The server could not read it as an image: whatever the browser made of it is no preview.
  const img = card.querySelector("img.preview");
  if (img && UNREADABLE.has(code.split(" ").pop())) img.replaceWith(placeholder({ name: text }));
}

// ------------------------------------------------------------------ copy and download
async function copyCaption(button, text, source) {
  let done = false;
  try {
    await navigator.clipboard.writeText(text);
    done = true;
  } catch (err) {
    // No clipboard API (a plain-http page that is not localhost) or no permission: the old way.
    const area = el("textarea", "offscreen");
    area.value = text;
    document.body.append(area);
    area.select();
    try { done = document.execCommand("copy"); } catch (e) { done = false; }
    area.remove();
  }
  if (!done) window.getSelection().selectAllChildren(source);
  button.textContent = done ? "Copied ✓" : "Press Ctrl+C to copy";
  button.dataset.copied = String(done);
  setStatus(done ? "caption copied" : "the caption is selected: press Ctrl+C (⌘C) to copy it");
  setTimeout(() => { button.textContent = "Copy caption"; delete button.dataset.copied; }, 2500);
}

// One record per picked image, in picked order: a caption with its fields, or the error.
function records() {
  return entries.filter((e) => e.item).map(({ name, item }) => {
    if (item.caption === undefined || item.caption === null) {
      return { file: name, error: item.error || "error", detail: item.detail || "" };
    }
    const rec = { file: name, caption: item.caption, score: item.score };
    for (const k of ["confidence", "in_domain", "domain_distance", "labels", "candidates"]) if (k in item) rec[k] = item[k];
    return rec;
  });
}

function csvCell(value) {
  if (value === undefined || value === null) return "";
  if (Array.isArray(value)) value = value.map((l) => `${l.name}:${l.probability}`).join("; ");
  const s = String(value);
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

// The CSV has the columns of `captioner caption --out captions.csv` (captioned images only).
function csvText() {
  const rows = records().filter((r) => r.caption !== undefined);
  return [CSV_COLUMNS, ...rows.map((r) => CSV_COLUMNS.map((k) => r[k]))]
    .map((row) => row.map(csvCell).join(",") + "\n").join("");
}

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

function updateDownloads() {
  const none = !entries.some((e) => e.item && e.item.caption !== undefined);
  $("download-json").disabled = none;
  $("download-csv").disabled = none;
}

// ------------------------------------------------------------------ requests
async function captionOne(file, entry) {
  const card = entry.card;
  const form = new FormData();
  form.append("file", file, file.name);
  // K captions need a beam of at least K: the beam is widened to K when it is narrower.
  const k = Math.min(Math.max(parseInt($("num-captions").value, 10) || 1, 1), maxBeam, MAX_CAPTIONS);
  const beam = Math.max(Math.min(Math.max(parseInt($("beam-size").value, 10) || 1, 1), maxBeam), k);
  let response, body;
  try {
    const explain = !$("explain-row").hidden && $("explain").checked ? "&explain=true" : "";
    const nbest = k > 1 ? `&num_captions=${k}` : "";
    const url = `/v1/captions?beam_size=${beam}&labels=${LABELS}${nbest}${explain}`;
    response = await fetch(url, { method: "POST", body: form, headers: apiHeaders() });
    body = await response.json();
  } catch (err) {
    showError(card, "network error: " + err.message, "");
    return;
  }
  if (response.status === 401) {
    $("key-row").hidden = false;
    sessionStorage.removeItem("captioner-api-key");
  }
  const item = body && body.results && body.results[0];
  if (response.ok && item && item.caption !== undefined && item.caption !== null) {
    entry.item = item;
    showCaption(card, item);
  } else {
    const detail = (item && item.detail) || (body && body.detail) || response.statusText;
    const code = (item && item.error) || (body && body.error) || "";
    entry.item = { error: code || `http_${response.status}`, detail };
    showError(card, detail, `${response.status}${code ? " " + code : ""}`, item && (item.file || item.filename));
  }
}

function summary() {
  const done = entries.filter((e) => e.item);
  const ok = done.filter((e) => e.item.caption !== undefined).length;
  const failed = done.length - ok;
  const unlike = done.filter((e) => e.item.in_domain === false).length;
  let text = `${ok} of ${done.length} ${done.length === 1 ? "image" : "images"} captioned`;
  if (failed) text += `, ${failed} failed`;
  if (unlike) text += `; ${unlike} ${unlike === 1 ? "looks" : "look"} unlike the training data`;
  return text;
}

function pump() {
  while (running < MAX_PARALLEL && queue.length) {
    const [file, entry] = queue.shift();
    running += 1;
    captionOne(file, entry).finally(() => {
      running -= 1;
      updateDownloads();
      setStatus(running || queue.length ? `${running + queue.length} image(s) in progress…` : summary());
      pump();
    });
  }
}

// Every picked file goes to the server, which says what it accepts (a photo format the
// browser cannot preview may still be captioned; a text file gets the server's reason).
function addFiles(files) {
  const picked = Array.from(files);
  if (!picked.length) return;
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem("captioner-api-key", key);
  for (const f of picked) {
    const entry = { name: f.name, card: addCard(f), item: null };
    entries.push(entry);
    queue.push([f, entry]);
  }
  setStatus(`${running + queue.length} image(s) in progress…`);
  pump();
}

// ------------------------------------------------------------------ the model line
function showModel(m) {
  $("model").textContent = `model: ${m.model_id} (${m.encoder.name}, ${m.device})`;
  $("explain-row").hidden = !(m.decoder && m.decoder.kind === "attention"); // maps need an attention model
  trainedOn = m.trained_on || (m.metadata && m.metadata.training_data) || "";
  const knows = $("knows");
  if (trainedOn) {
    const [head, ...rest] = trainedOn.replace(/\.$/, "").split(":");
    // `a command` in the sentence shows as code
    const tail = (rest.length ? ":" + rest.join(":") : "").split("`").map((t, i) => (i % 2 ? el("code", "", t) : t));
    const flags = m.trust && m.trust.domain; // the checkpoint can tell an unfamiliar picture
    knows.replaceChildren("This model knows ", el("strong", "", head), ...tail,
      flags ? ". Pictures unlike these are marked as such." : ".");
  } else {
    knows.textContent = "This model's checkpoint does not say what it was trained on.";
  }
  knows.hidden = false;
  if (m.service) {
    maxBeam = m.service.max_beam_size;
    $("beam-size").max = String(maxBeam);
    $("beam-size").value = String(m.service.default_beam_size);
    $("num-captions").max = String(Math.min(maxBeam, MAX_CAPTIONS));
    $("limits").textContent =
      `up to ${formatCount(m.service.max_pixels)} pixels and ${formatBytes(m.service.max_body_bytes)} per image`;
  }
}

function setup() {
  const input = $("file");
  input.addEventListener("change", () => { addFiles(input.files); input.value = ""; });
  const drop = $("drop");
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const ev of ["dragleave", "drop"]) {
    drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => addFiles(e.dataTransfer.files));
  // Dropping outside the drop zone must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("clear").addEventListener("click", () => {
    $("results").replaceChildren();
    entries.length = 0;
    queue.length = 0;
    updateDownloads();
    setStatus("");
  });
  $("download-json").addEventListener("click", () =>
    download("captions.json", "application/json", JSON.stringify(records(), null, 2) + "\n"));
  $("download-csv").addEventListener("click", () => download("captions.csv", "text/csv", csvText()));
  $("options").addEventListener("submit", (e) => e.preventDefault());
  // K captions come from a beam of K or more: the beam follows the captions asked for.
  $("num-captions").addEventListener("input", () => {
    const k = parseInt($("num-captions").value, 10) || 1;
    if (k > (parseInt($("beam-size").value, 10) || 1)) $("beam-size").value = String(Math.min(k, maxBeam));
  });

  // A key typed in is remembered for this tab and tried at once on /v1/model.
  $("api-key").addEventListener("change", () => {
    const key = $("api-key").value.trim();
    if (key) sessionStorage.setItem("captioner-api-key", key);
    loadModel();
  });
  loadModel();
}

function loadModel() {
  fetch("/v1/model", { headers: apiHeaders() })
    .then((r) => {
      if (r.status === 401) {
        $("key-row").hidden = false;
        sessionStorage.removeItem("captioner-api-key");
        throw new Error("API key required");
      }
      return r.json();
    })
    .then(showModel)
    .catch((err) => { $("model").textContent = "model: " + err.message; });
}

setup();
