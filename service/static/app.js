// The upload page: pick or drop images, each is POSTed to /v1/captions on its own
// (the server batches concurrent requests), and its card shows the caption.
// No framework, no CDN: this file is the whole client. Text from the server is always
// inserted with textContent, never as HTML.
"use strict";

const MAX_PARALLEL = 4;
const $ = (id) => document.getElementById(id);
const queue = [];
let running = 0;
let maxBeam = 5;

function apiHeaders() {
  const key = sessionStorage.getItem("captioner-api-key") || $("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function setStatus(text) { $("status").textContent = text; }

function addCard(file) {
  const li = document.createElement("li");
  li.className = "card";
  li.dataset.state = "pending";
  const img = document.createElement("img");
  img.alt = file.name;
  img.src = URL.createObjectURL(file);
  img.addEventListener("load", () => URL.revokeObjectURL(img.src), { once: true });
  img.addEventListener("error", () => URL.revokeObjectURL(img.src), { once: true });
  const body = document.createElement("div");
  body.className = "body";
  const name = document.createElement("p");
  name.className = "name";
  name.textContent = file.name;
  const caption = document.createElement("p");
  caption.className = "caption";
  caption.textContent = "captioning…";
  const meta = document.createElement("p");
  meta.className = "meta";
  body.append(name, caption, meta);
  li.append(img, body);
  $("results").prepend(li);
  return li;
}

function showResult(card, ok, captionText, metaText) {
  card.dataset.state = ok ? "done" : "error";
  card.querySelector(".caption").textContent = captionText;
  card.querySelector(".meta").textContent = metaText;
}

async function captionOne(file, card) {
  const form = new FormData();
  form.append("file", file, file.name);
  const beam = Math.min(Math.max(parseInt($("beam-size").value, 10) || 1, 1), maxBeam);
  let response, body;
  try {
    response = await fetch("/v1/captions?beam_size=" + beam, { method: "POST", body: form, headers: apiHeaders() });
    body = await response.json();
  } catch (err) {
    showResult(card, false, "network error: " + err.message, "");
    return;
  }
  if (response.status === 401) {
    $("key-row").hidden = false;
    sessionStorage.removeItem("captioner-api-key");
  }
  const item = body && body.results && body.results[0];
  if (response.ok && item && item.caption !== undefined && item.caption !== null) {
    showResult(card, true, item.caption, `score ${item.score.toFixed(2)} · ${Math.round(item.time_ms)} ms`);
  } else {
    const detail = (item && item.detail) || (body && body.detail) || response.statusText;
    showResult(card, false, detail, `error ${response.status}: ${(item && item.error) || (body && body.error) || ""}`);
  }
}

function pump() {
  while (running < MAX_PARALLEL && queue.length) {
    const [file, card] = queue.shift();
    running += 1;
    captionOne(file, card).finally(() => {
      running -= 1;
      setStatus(running || queue.length ? `${running + queue.length} image(s) in progress…` : "done");
      pump();
    });
  }
}

function addFiles(files) {
  const images = Array.from(files).filter((f) => f.type.startsWith("image/") || f.type === "");
  if (!images.length) { setStatus("no image among the dropped files"); return; }
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem("captioner-api-key", key);
  for (const f of images) queue.push([f, addCard(f)]);
  setStatus(`${images.length} image(s) in progress…`);
  pump();
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
  $("clear").addEventListener("click", () => { $("results").replaceChildren(); setStatus(""); });
  $("options").addEventListener("submit", (e) => e.preventDefault());

  fetch("/v1/model", { headers: apiHeaders() })
    .then((r) => {
      if (r.status === 401) { $("key-row").hidden = false; throw new Error("API key required"); }
      return r.json();
    })
    .then((m) => {
      $("model").textContent = `model: ${m.model_id} (${m.encoder.name}, ${m.device})`;
      if (m.service) {
        maxBeam = m.service.max_beam_size;
        $("beam-size").max = String(maxBeam);
        $("beam-size").value = String(m.service.default_beam_size);
      }
    })
    .catch((err) => { $("model").textContent = "model: " + err.message; });
}

setup();
