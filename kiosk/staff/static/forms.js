// The staff pages' forms: what is in them, whether it differs from what the speaker has ("Not saved yet"), the
// messages beside them (saving…, saved, not saved) and the errors the speaker put under their fields.
//
// Every form posts as a plain form without script; send.js makes the tracked ones answer in place.

import { announce, later, make } from "./common.js";

const NOT_FIELDS = new Set(["hidden", "submit", "button", "reset", "image", "file"]);

const clean = new WeakMap(); // form → its fields as the speaker last sent them

// Login, logout and downloads are ordinary navigation (data-plain, or GET): only the other forms are tracked.
export function trackedForms(root = document) {
  return [...root.querySelectorAll("form")].filter(
    (form) => (form.getAttribute("method") || "").toLowerCase() === "post" && !form.hasAttribute("data-plain"),
  );
}

function controls(form) {
  return [...form.elements].filter(
    (el) => el.name && el.matches("input, textarea, select") && !NOT_FIELDS.has(el.type),
  );
}

export function readFields(form, { secrets = true } = {}) {
  const seen = new Map();
  return controls(form)
    .map((el) => {
      const index = (seen.get(el.name) ?? -1) + 1;
      seen.set(el.name, index);
      const value = el.type === "checkbox" || el.type === "radio" ? el.checked : el.value;
      return { name: el.name, index, value, secret: el.type === "password" };
    })
    .filter((field) => secrets || !field.secret); // a password is never written to storage
}

function writeFields(form, fields) {
  const byName = new Map();
  controls(form).forEach((el) => byName.set(el.name, [...(byName.get(el.name) || []), el]));
  fields.forEach((field) => {
    const el = (byName.get(field.name) || [])[field.index];
    if (!el) return;
    if (typeof field.value === "boolean") el.checked = field.value;
    else el.value = field.value;
  });
}

// What staff typed, put back into a fresh copy of its form: still marked "Not saved yet". Setting a value fires no
// input event, so a page's own script that shows something about its fields (the Lines page's lengths) is told.
export function fillIn(form, fields) {
  writeFields(form, fields);
  refreshDirty(form);
  form.dispatchEvent(new CustomEvent("kiosk:filled", { bubbles: true }));
}

// A control that only chooses what to listen to or look at (the Lines page's "In [language]" beside "Play on the
// speaker" and "Listen here") is sent with its form but is no edit: marked data-not-edit, it never makes the form
// "Not saved yet" nor the page ask before it is left.
function isEdit(el) {
  return !el.hasAttribute("data-not-edit");
}

function snapshot(form) {
  return JSON.stringify(
    controls(form)
      .filter(isEdit)
      .map((el) => (el.type === "checkbox" || el.type === "radio" ? el.checked : el.value)),
  );
}

// What the form holds as saved: a field the server filled with something not saved yet (a translation draft)
// says what is saved in data-saved, so that the form counts as unsaved until Save.
function savedSnapshot(form) {
  return JSON.stringify(
    controls(form).filter(isEdit).map((el) => {
      if (el.dataset && el.dataset.saved !== undefined) return el.dataset.saved;
      return el.type === "checkbox" || el.type === "radio" ? el.checked : el.value;
    }),
  );
}

// A form is known by its action and its place among forms with the same action, in this page or the next.
export function keyOf(form) {
  const action = form.getAttribute("action") || "";
  const same = trackedForms().filter((f) => (f.getAttribute("action") || "") === action);
  return `${action}#${same.indexOf(form)}`;
}

export function findForm(key) {
  return trackedForms().find((form) => keyOf(form) === key) || null;
}

export function isDirty(form) {
  return clean.has(form) && snapshot(form) !== clean.get(form);
}

export function dirtyForms() {
  return trackedForms().filter(isDirty);
}

function actionsOf(form) {
  return form.querySelector(".actions") || form.querySelector("button[type=submit], button:not([type])");
}

function refreshDirty(form) {
  const dirty = isDirty(form);
  form.toggleAttribute("data-dirty", dirty);
  const note = form.querySelector(".unsaved");
  if (dirty && !note) {
    const anchor = actionsOf(form);
    const fresh = make("p", { class: "unsaved" }, "Not saved yet");
    if (anchor) anchor.before(fresh);
    else form.append(fresh);
  } else if (!dirty && note) {
    note.remove();
  }
}

// Staff changed a field: the form may now differ from what is saved, and then "Saved" no longer says how things are
// (a choice that is no edit, such as the language to listen in, leaves it be).
export function edited(form) {
  if (!form || !clean.has(form)) return;
  refreshDirty(form);
  if (!isDirty(form)) return;
  form.querySelectorAll('.form-msg[data-kind="done"], .form-msg[data-kind="note"]').forEach((m) => m.remove());
}

// ---- messages beside a form: saving…, saved, not saved

export function say(form, kind, text) {
  form.querySelectorAll(".form-msg").forEach((old) => old.remove());
  const message = make("p", { class: "form-msg", "data-kind": kind, role: kind === "error" ? "alert" : "status" }, text);
  const anchor = actionsOf(form);
  if (anchor) anchor.after(message);
  else form.append(message);
  if (kind !== "busy") announce(text);
  if (kind === "done") {
    later(message, 8000, () => message.remove());
    showOnScreen(message);
  }
  if (kind === "error") message.scrollIntoView({ block: "nearest" });
  return message;
}

// The confirmation is seen where the person is: on a phone a form's buttons wrap into rows, and "Saved" under the
// last row could land below the screen while the Save tapped is on it. Then the page moves just enough to show it
// (the button stays on screen; nothing moves when it is already in view). Screen readers hear it through #announce.
function showOnScreen(message) {
  const box = message.getBoundingClientRect();
  if (box.top >= 0 && box.bottom <= window.innerHeight) return;
  message.scrollIntoView({ block: "nearest" });
}

// ---- the errors the speaker sent back, each tied to its field for screen readers

function linkErrors(root) {
  root.querySelectorAll(".error").forEach((error, i) => {
    if (error.id && document.querySelector(`[aria-describedby~="${CSS.escape(error.id)}"]`)) return; // linked
    const control = fieldBefore(error);
    if (!control) return;
    if (!error.id) error.id = `error-${Date.now().toString(36)}-${i}`;
    const described = (control.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean);
    if (!described.includes(error.id)) control.setAttribute("aria-describedby", [...described, error.id].join(" "));
    control.setAttribute("aria-invalid", "true");
    if (!error.hasAttribute("role")) error.setAttribute("role", "alert");
  });
}

// The field an error is about: the nearest one before it (notes between the two are skipped).
function fieldBefore(error) {
  for (let el = error.previousElementSibling; el; el = el.previousElementSibling) {
    if (el.matches("input, textarea, select")) return el.type === "hidden" ? null : el;
    if (el.matches("p, span, output, button, .error")) continue;
    const inner = [...el.querySelectorAll("input:not([type=hidden]), textarea, select")];
    return inner.length ? inner[inner.length - 1] : null;
  }
  return null;
}

export function showFirstError(root) {
  const error = root && root.querySelector(".error");
  if (!error) return;
  error.scrollIntoView({ block: "center" });
  const control = error.id && document.querySelector(`[aria-describedby~="${CSS.escape(error.id)}"]`);
  if (control) control.focus({ preventScroll: true });
}

// ---- a page (or a new <main>) is ready

// Each page's own script does its part on "kiosk:page" (the new root in detail): it is loaded once, and a <main>
// that arrives after a save runs no script of its own.
export function initPage(root) {
  trackedForms(root).forEach((form) => {
    clean.set(form, savedSnapshot(form));
    refreshDirty(form);
  });
  linkErrors(root);
  document.dispatchEvent(new CustomEvent("kiosk:page", { detail: root }));
}
