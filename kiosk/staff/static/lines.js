// The Lines page: each line's length as staff type, a filter for long lists, what each button says, which lines
// are ready offline, and "Listen here" (listen.js).

import { setField } from "./common.js";
import "./listen.js";

function spokenLength(chars, perChar) {
  const seconds = Math.round(chars * perChar);
  const minutes = Math.floor(seconds / 60);
  return minutes ? `${minutes} min ${seconds % 60} s` : `${Math.max(seconds, 1)} s`;
}

function updateLength(textarea) {
  const note = document.getElementById(textarea.dataset.length);
  const list = document.querySelector("[data-s-per-char]");
  if (!note || !list) return;
  const perChar = Number(list.dataset.sPerChar);
  const long = Number(list.dataset.longS);
  const chars = textarea.value.length;
  const isLong = Math.round(chars * perChar) > long;
  note.classList.toggle("warning", isLong);
  const words = chars ? `${chars} characters, about ${spokenLength(chars, perChar)} to say` : "0 characters";
  note.textContent = isLong ? `${words} — long: many visitors walk on before the end` : words;
}

function updateLengths(root) {
  root.querySelectorAll("textarea[data-length]").forEach(updateLength);
}

function applyFilter(input) {
  const query = input.value.trim().toLowerCase();
  const items = [...document.querySelectorAll(input.dataset.filter)];
  let shown = 0;
  items.forEach((item) => {
    const match = !query || item.textContent.toLowerCase().includes(query) ||
      [...item.querySelectorAll("textarea")].some((t) => t.value.toLowerCase().includes(query));
    item.hidden = !match;
    shown += match ? 1 : 0;
  });
  setField(document, "filter_count", query ? `Showing ${shown} of ${items.length} lines` : "");
}

function updateSays(select) {
  const note = document.getElementById(select.dataset.says);
  const option = select.selectedOptions[0];
  if (note && option) note.textContent = `“${option.dataset.text || ""}”`;
}

function updateReadiness(s) {
  const ready = new Set(s.cache.ready_ids || []);
  setField(document, "lines_ready", String(s.cache.lines_ready));
  document.querySelectorAll("[data-ready-for]").forEach((tag) => {
    const yes = ready.has(tag.dataset.readyFor);
    if (tag.dataset.ready === (yes ? "yes" : "no")) return;
    tag.dataset.ready = yes ? "yes" : "no";
    tag.textContent = yes ? "Ready offline" : "Not ready offline yet";
  });
}

function onInput(event) {
  const el = event.target;
  if (!el.matches) return;
  if (el.matches("textarea[data-length]")) updateLength(el);
  if (el.matches("[data-filter]")) applyFilter(el);
  if (el.matches("select[data-says]")) updateSays(el);
}

document.addEventListener("input", onInput);
document.addEventListener("change", onInput);
// Text put back after a save or a new login: its length is shown again.
document.addEventListener("kiosk:filled", (event) => updateLengths(event.target));
// The filter needs script, so it is shown only with it; after a save it still hides what it hid.
document.addEventListener("kiosk:page", (event) => {
  const root = event.detail;
  root.querySelectorAll("[data-filter-box]").forEach((box) => { box.hidden = false; });
  root.querySelectorAll("[data-filter]").forEach(applyFilter);
});
document.addEventListener("kiosk:status", (event) => updateReadiness(event.detail));
