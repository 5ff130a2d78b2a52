// The edgecls device page: polls /api/status, shows the MJPEG stream, files kept frames with one click.
// Plain JavaScript, no libraries: the device may be offline, and there is nothing to build.
"use strict";
const $ = (id) => document.getElementById(id);
let labels = [];
let status = null;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") e.onclick = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function say(text) {
  $("message").textContent = text;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { $("message").textContent = ""; }, 4000);
}

// Same-origin requests carry the token's cookie (set by the ?token= link) on a server bound beyond loopback.
async function post(path, body) {
  const r = await fetch(path, {method: "POST", credentials: "same-origin",
                               headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
  const out = await r.json().catch(() => ({}));   // a 401 or a proxy's error page is not JSON
  if (r.status === 401) throw new Error("no access: open the link with ?token= that edgecls printed");
  if (!r.ok) throw new Error(out.error || `${r.status} ${r.statusText}`);
  return out;
}

function showPage(name) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.page === name);
  $("page-live").hidden = name !== "live";
  $("page-gallery").hidden = name !== "gallery";
  if (name === "gallery") loadGallery();
}

function drawTop(top) {
  const box = $("topk");
  box.replaceChildren(...top.map((t) => el("div", {class: "bar", "data-label": t.label},
    el("span", {class: "name"}, t.label),
    el("span", {class: "track"}, el("span", {class: "fill", style: `display:block;width:${(t.p * 100).toFixed(1)}%`})),
    el("span", {class: "p"}, (t.p * 100).toFixed(1) + "%"))));
}

function drawEvents(events) {
  if (!events.length) return;
  $("events").replaceChildren(...events.map((e) =>
    el("li", {}, `${e.time.slice(11, 19)} ${e.event} ${e.label} (${(e.confidence * 100).toFixed(0)}%)`)));
}

function setupLabels(s) {
  labels = s.labels;
  $("capture").hidden = !s.can_capture;
  $("teach").hidden = !s.can_teach;   // `edgecls ui DATA_DIR` has no model to teach
  $("capture-buttons").replaceChildren(...labels.map((lab, i) =>
    el("button", {class: "capture", "data-label": lab, title: i < 9 ? `key ${i + 1}` : "", onclick: () => capture(lab)},
       lab, ...(i < 9 ? [el("small", {class: "key"}, ` ${i + 1}`)] : []))));
  if (s.mode === "run") $("stream").src = "/stream";
  else { $("stream-box").hidden = true; $("no-stream").hidden = false; showPage("gallery"); }
}

async function poll() {
  try {
    const r = await fetch("/api/status", {cache: "no-store"});
    const s = await r.json();
    if (status && s.started !== status.started) { location.reload(); return; }   // run started again (a new version)
    if (!status) setupLabels(s);
    status = s;
    $("fps").textContent = s.fps.toFixed(1);
    $("latency").textContent = s.latency_ms_p50 == null ? "–" : s.latency_ms_p50.toFixed(1);
    $("frames").textContent = s.frames;
    drawTop(s.top);
    drawEvents(s.events);
    if (s.keep && s.keep.kept !== undefined) $("kept-count").textContent = `(${s.keep.kept})`;
  } catch (e) { /* the device restarted or the network blinked: try again */ }
  setTimeout(poll, 500);
}

async function capture(label) {
  try { const out = await post("/api/capture", {label}); say(`saved ${out.saved}`); }
  catch (e) { say(`capture failed: ${e.message}`); }
}

async function file(name, label, card) {
  try {
    const out = label === null ? await post("/api/discard", {name}) : await post("/api/label", {name, label});
    card.remove();
    say(label === null ? `discarded ${name}` : `filed as ${out.moved_to}`);
  } catch (e) { say(`failed: ${e.message}`); }
}

async function loadGallery() {
  const r = await fetch("/api/kept", {cache: "no-store"});
  const photos = (await r.json()).photos;
  const canLabel = status ? status.can_label : false;
  $("gallery-note").textContent = photos.length ? (canLabel ? "One click files a frame into DATA_DIR/<class>." :
    "Filing needs both run --keep DIR and --data DATA_DIR.") : "No kept frames yet.";
  $("gallery").replaceChildren(...photos.map((p) => {
    const guess = p.model && p.model.label ? `${p.model.label} ${(p.model.confidence * 100).toFixed(0)}%` : "?";
    const card = el("div", {class: "card", "data-name": p.name});
    card.append(el("img", {src: p.url, alt: p.name, loading: "lazy"}),
                el("div", {class: "guess"}, `model: ${guess}`));
    if (status && status.can_teach) {
      const pick = el("input", {type: "checkbox", class: "pick", title: "teach from this frame"});
      pick.onchange = countPicked;
      card.append(el("label", {class: "picker"}, pick, " teach from this"));
    }
    if (canLabel) {
      card.append(el("div", {class: "buttons"},
        ...labels.map((lab) => el("button", {class: "label", "data-label": lab, onclick: () => file(p.name, lab, card)}, lab)),
        el("button", {class: "discard", onclick: () => file(p.name, null, card)}, "discard")));
    }
    return card;
  }));
  countPicked();
}

function picked() {
  return [...document.querySelectorAll("#gallery .pick:checked")].map((c) => c.closest(".card").dataset.name);
}

function countPicked() { $("teach-picked").textContent = picked().length; }

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The reply comes when the teach is done, or 202 while it still runs: then its state is polled.
async function teach(body) {
  const shown = $("teach-result");
  shown.textContent = `teaching ${body.label}…`;
  try {
    let out = await post("/api/teach", body);
    while (out.state === "capturing" || out.state === "teaching") {
      shown.textContent = out.state === "capturing" ? `capturing ${out.captured || 0}/${body.capture} frames…`
                                                    : `teaching ${body.label}…`;
      await pause(500);
      out = await (await fetch("/api/teach", {cache: "no-store"})).json();
    }
    if (out.state !== "done") throw new Error(out.error || "the teach stopped");
    shown.textContent = `taught ${out.label}: new version ${out.bundle} (exam ${out.exam}; ${out.photos} photos, ` +
      `${out.seconds} s). The camera still runs the previous version: "Run it now" switches to the new one.`;
    taught = out.bundle;
    $("teach-use").hidden = false;
    for (const c of document.querySelectorAll("#gallery .pick:checked")) c.checked = false;
    countPicked();
  } catch (e) { shown.textContent = `teach failed: ${e.message}`; }
}

// `run` starts again on the taught version: the page reloads when /api/status answers from the new start (poll).
let taught = null;
async function useTaught() {
  try {
    await post("/api/teach/use", {bundle: taught});
    $("teach-use").hidden = true;
    $("teach-result").textContent = `switching to ${taught}…`;
  } catch (e) { $("teach-result").textContent = `switch failed: ${e.message}`; }
}

document.addEventListener("keydown", (e) => {
  const i = "123456789".indexOf(e.key);
  if (i >= 0 && i < labels.length && status && status.can_capture && !$("page-live").hidden) capture(labels[i]);
});
for (const b of document.querySelectorAll(".tab")) b.onclick = () => showPage(b.dataset.page);
$("refresh").onclick = loadGallery;
$("teach-kept").onclick = () => teach({label: $("teach-label").value.trim(), names: picked()});
$("teach-use").onclick = useTaught;
$("teach-capture").onclick = () => teach({label: $("teach-label").value.trim(), capture: Number($("teach-count").value)});
poll();
