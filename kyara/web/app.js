// The kyara page: send an image to the REST API, draw what comes back, explain it, teach new characters.
"use strict";

const $ = (id) => document.getElementById(id);
const percent = (value) => `${Math.round(value * 100)}%`;

// request: the latest recognition; explaining/explained: the recognition whose heat maps are on the way/drawn.
const state = { file: null, maxBytes: Infinity, request: 0, explaining: 0, explained: 0 };

// The server's write token (kyara serve --token), asked for on the first 401 and kept for this tab only.
const TOKEN_KEY = "kyara-token";

async function api(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(path, { method, body, headers });
    const data = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
    if (response.status === 401 && attempt < 2) {
      sessionStorage.removeItem(TOKEN_KEY);
      const asked = window.prompt(
        `${token ? "That token was refused. " : ""}This server needs its write token to change characters ` +
          "(kyara serve --token). Token:",
      );
      if (asked) {
        sessionStorage.setItem(TOKEN_KEY, asked.trim());
        continue;
      }
      throw new Error("Not changed: this server needs its write token (kyara serve --token) to change characters.");
    }
    if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
    return data;
  }
}

function imageForm(file) {
  const form = new FormData();
  form.append("file", file, file.name || "pasted.png");
  return form;
}

function say(message, kind = "") {
  $("status").textContent = message;
  $("status").className = kind;
}

async function choose(file) {
  if (!file) return;
  if (file.size > state.maxBytes) {
    say(`${file.name}: ${(file.size / 1048576).toFixed(1)} MB is over the server's limit of ` +
        `${(state.maxBytes / 1048576).toFixed(1)} MB.`, "error");
    return;
  }
  state.file = file;
  const picture = $("picture");
  if (picture.src) URL.revokeObjectURL(picture.src);
  picture.src = URL.createObjectURL(file);
  $("stage").hidden = false;
  await recognize();
}

async function recognize() {
  const ticket = ++state.request;
  clearResults();
  say("Looking for faces…", "busy");
  try {
    const result = await api("POST", "api/recognize?top_k=5", imageForm(state.file));
    if (ticket !== state.request) return; // a newer image was chosen meanwhile
    show(result);
    const found = result.faces.filter((face) => !face.fallback).length;
    say(found ? `${found} face${found > 1 ? "s" : ""} found.` : "");
    $("explain-bar").hidden = false;
    if ($("explain").checked) explain();
  } catch (error) {
    if (ticket === state.request) say(error.message, "error");
  }
}

function clearResults() {
  $("boxes").replaceChildren();
  $("heat").replaceChildren();
  showHeat(false);
  $("explain-bar").hidden = true;
  $("faces").replaceChildren();
  $("fallback").hidden = true;
  $("no-faces").hidden = false;
}

function show(result) {
  $("no-faces").hidden = result.faces.length > 0;
  $("fallback").hidden = !result.faces.some((face) => face.fallback);
  result.faces.forEach((face, index) => {
    if (!face.fallback) $("boxes").append(drawBox(face, index + 1, result));
    $("faces").append(faceCard(face, index + 1));
  });
}

async function explain() {
  const ticket = state.request;
  if (state.explained === ticket) return showHeat(true);
  if (state.explaining === ticket) return; // already asked for: it shows when it comes
  state.explaining = ticket;
  say("Explaining… about half a second per face.", "busy");
  try {
    const result = await api("POST", "api/explain", imageForm(state.file));
    if (ticket !== state.request) return;
    $("heat").replaceChildren(...result.faces.flatMap((face) => heatLayer(face, result)));
    state.explained = ticket;
    showHeat($("explain").checked);
    say(`Explained ${result.faces.length} face${result.faces.length > 1 ? "s" : ""}.`);
  } catch (error) {
    if (ticket === state.request) say(error.message, "error");
  } finally {
    if (state.explaining === ticket) state.explaining = 0;
  }
}

function showHeat(on) {
  $("heat").hidden = !on;
  $("explain-legend").hidden = !on;
  $("frame").classList.toggle("explaining", on); // muted colours let the heat colours stand out
}

// One face's heat map, laid over the crop it explains, and a caption under the face.
function heatLayer(face, image) {
  const [x, y, w, h] = face.crop_box;
  const map = document.createElement("canvas");
  map.className = "heatmap";
  paintHeat(map, face.heatmap);
  Object.assign(map.style, {
    left: `${(100 * x) / image.width}%`,
    top: `${(100 * y) / image.height}%`,
    width: `${(100 * w) / image.width}%`,
    height: `${(100 * h) / image.height}%`,
    transform: `rotate(${face.angle}deg)`, // the crop was cut upright: turn the map back onto the face
  });
  return [map, heatCaption(face, image)];
}

// The colours of kyara.explanation's overlay picture: clear near 0, yellow to red for the label,
// cyan to blue against it; the canvas's own smoothing enlarges the 32 x 32 grid.
function paintHeat(canvas, heatmap) {
  const rows = heatmap.length;
  const columns = heatmap[0].length;
  const peak = Math.max(...heatmap.flat().map(Math.abs)) || 1;
  canvas.width = columns;
  canvas.height = rows;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(columns, rows);
  heatmap.flat().forEach((value, index) => {
    const strength = Math.min(1, Math.abs(value) / peak);
    const colour = value >= 0
      ? [255, 230 * (1 - strength), 20 * strength]
      : [40 * strength, 210 - 120 * strength, 255];
    const alpha = 220 * Math.min(1, Math.max(0, (strength - 0.1) / 0.9));
    pixels.data.set([...colour, alpha].map(Math.round), 4 * index);
  });
  context.putImageData(pixels, 0, 0);
}

function heatCaption(face, image) {
  const [x, y, w, h] = face.box;
  const caption = document.createElement("span");
  caption.className = "caption";
  if ((y + h) / image.height > 0.92) caption.classList.add("inside"); // no room under the face
  if ((x + w) / image.width > 0.8) {
    caption.classList.add("end");
    caption.style.right = `${(100 * (image.width - x - w)) / image.width}%`;
  } else {
    caption.style.left = `${(100 * x) / image.width}%`;
  }
  caption.style.top = `${(100 * (y + h)) / image.height}%`;
  const name = face.known ? face.label : `${face.label}?`; // ?: the model would not give this name
  const parts = face.versus === null
    ? [[name, "for"], [` ${face.score.toFixed(2)}`, ""]]
    : [[name, "for"], [" vs ", ""], [face.versus, "against"],
       [` ${face.score >= 0 ? "+" : ""}${face.score.toFixed(2)}`, ""]];
  for (const [text, kind] of parts) {
    const part = document.createElement("span");
    part.className = kind;
    part.textContent = text;
    caption.append(part);
  }
  return caption;
}

function title(face) {
  return face.label ?? "unknown";
}

function drawBox(face, number, image) {
  const [x, y, w, h] = face.box;
  const box = document.createElement("div");
  box.className = `box ${face.label ? "known" : "unknown"}`;
  Object.assign(box.style, {
    left: `${(100 * x) / image.width}%`,
    top: `${(100 * y) / image.height}%`,
    width: `${(100 * w) / image.width}%`,
    height: `${(100 * h) / image.height}%`,
  });
  const tag = document.createElement("span");
  tag.className = "tag";
  if (y / image.height < 0.08) tag.classList.add("inside"); // no room above the box
  if ((x + w) / image.width > 0.8) tag.classList.add("end"); // keep the label on the picture
  // An unknown face's confidence is its closest guess's, not a belief that it is unknown.
  tag.textContent = face.label ? `${number} ${face.label} ${percent(face.confidence)}` : `${number} unknown`;
  box.append(tag);
  return box;
}

function faceCard(face, number) {
  const card = $("face-template").content.firstElementChild.cloneNode(true);
  card.classList.add(face.label ? "known" : "unknown");
  card.querySelector(".badge").textContent = number;
  card.querySelector(".name").textContent = title(face);
  card.querySelector(".confidence").textContent = face.label ? percent(face.confidence) : "";
  const closest = face.top_k[0];
  card.querySelector(".hint").textContent = face.label
    ? ""
    : `Below the unknown threshold; closest guess: ${closest ? `${closest.label} (${percent(closest.confidence)})` : "none"}.`;
  for (const guess of face.top_k) {
    const bar = document.createElement("li");
    const label = document.createElement("span");
    const track = document.createElement("span");
    const fill = document.createElement("span");
    const value = document.createElement("span");
    label.className = "label";
    track.className = "track";
    fill.className = "fill";
    value.className = "value";
    label.textContent = guess.label;
    fill.style.width = percent(guess.confidence);
    value.textContent = percent(guess.confidence);
    track.append(fill);
    bar.append(label, track, value);
    card.querySelector(".bars").append(bar);
  }
  const teach = card.querySelector(".teach");
  if (face.fallback) {
    teach.remove(); // no face to learn from
  } else {
    teach.open = !face.label;
    teach.querySelector("summary").textContent = face.label ? "Wrong name? Teach the right one" : "Who is it? Teach kyara";
    teach.querySelector("form").addEventListener("submit", (event) => {
      event.preventDefault();
      enroll(event.target.elements.name.value, face, event.target);
    });
  }
  return card;
}

async function enroll(name, face, form) {
  const [x, y, w, h] = face.box;
  const query = new URLSearchParams({ x, y, w, h, angle: face.angle });
  form.querySelector("button").disabled = true;
  say(`Teaching kyara ${name}…`, "busy");
  try {
    await api("POST", `api/characters/${encodeURIComponent(name.trim())}/images?${query}`, imageForm(state.file));
    await loadCharacters();
    await recognize();
    say(`Enrolled ${name.trim()}; recognized again.`);
  } catch (error) {
    say(error.message, "error");
    form.querySelector("button").disabled = false;
  }
}

async function forget(name) {
  if (!window.confirm(`Remove ${name} from the model?`)) return;
  try {
    await api("DELETE", `api/characters/${encodeURIComponent(name)}`);
    await loadCharacters();
    say(`Removed ${name}.`);
    if (state.file) await recognize();
  } catch (error) {
    say(error.message, "error");
  }
}

async function loadCharacters() {
  const known = await api("GET", "api/characters");
  $("character-count").textContent = known.length;
  $("characters").replaceChildren(
    ...known.map((character) => {
      const item = document.createElement("li");
      const name = document.createElement("span");
      const counts = document.createElement("span");
      const remove = document.createElement("button");
      name.className = "name";
      name.textContent = character.name;
      counts.className = "quiet";
      counts.textContent = [
        character.trained ? `trained on ${character.training_images}` : "",
        character.enrolled_images ? `${character.enrolled_images} enrolled` : "",
      ].filter(Boolean).join(", ");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${character.name}`);
      remove.addEventListener("click", () => forget(character.name));
      item.append(name, counts, remove);
      return item;
    }),
  );
}

async function start() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => choose(event.target.files[0]));
  $("explain").addEventListener("change", (event) => (event.target.checked ? explain() : showHeat(false)));
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      $("file").click();
    }
  });
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) drop.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose(event.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (event) => {
    const item = [...event.clipboardData.items].find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) choose(item.getAsFile());
  });
  $("picture").addEventListener("error", () => {
    $("stage").hidden = true; // e.g. TIFF: the browser cannot show it, the results still come
  });
  try {
    const health = await api("GET", "api/health");
    state.maxBytes = health.limits.max_body_bytes;
    $("model").textContent = `Model: ${health.model.name} ${health.model.version ?? ""}, ` +
      `${health.model.characters} characters`;
    await loadCharacters();
  } catch (error) {
    say(`The server does not answer: ${error.message}`, "error");
  }
}

start();
