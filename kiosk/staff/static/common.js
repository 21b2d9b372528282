// Small helpers every staff page's script shares: making elements, filling data-field slots, passing notes.
//
// Text goes into the page with textContent only: nothing staff or visitors typed ever becomes markup here.

export const POLL_TIMEOUT_MS = 4000;

const timers = new WeakMap(); // element → timer that will undo a passing highlight or message

export function make(tag, attributes = {}, text = "") {
  const el = document.createElement(tag);
  Object.entries(attributes).forEach(([name, value]) => el.setAttribute(name, value));
  el.textContent = text;
  return el;
}

export function setField(root, name, text) {
  root.querySelectorAll(`[data-field="${name}"]`).forEach((el) => {
    if (el.textContent !== text) el.textContent = text;
  });
}

export function showBox(name, show) {
  document.querySelectorAll(`[data-field-box="${name}"]`).forEach((el) => { el.hidden = !show; });
}

export function later(el, ms, undo) {
  clearTimeout(timers.get(el));
  timers.set(el, setTimeout(undo, ms));
}

export function announce(text) {
  const region = document.getElementById("announce");
  if (!region) return;
  region.textContent = "";
  requestAnimationFrame(() => { region.textContent = text; }); // a change, so screen readers say it again
}

export function toast(text) {
  let box = document.querySelector(".toast");
  if (!box) {
    box = make("div", { class: "toast", "aria-hidden": "true" }); // said through #announce
    document.body.append(box);
  }
  box.textContent = text;
  box.hidden = false;
  later(box, 5000, () => { box.hidden = true; });
}
