// Forms that answer in place: a save sends the form in the background and the page stays where it was, with what
// staff typed elsewhere on it kept.
//
// After a save, <main> is replaced by the page the speaker sent back (rendered by its own templates, which escape
// everything) — the same HTML a reload would show.

import { announce, toast } from "./common.js";
import { keepAndLogIn } from "./drafts.js";
import { dirtyForms, fillIn, findForm, initPage, isDirty, keyOf, readFields, say, showFirstError } from "./forms.js";

const SEND_TIMEOUT_MS = 20000; // lines.py ends translation drafts a little before (SCRIPT_DRAFT_TIMEOUT_S)

function plainError(status, text) {
  if (status === 413) return "Not saved: that is too much text to send at once.";
  if (status === 403) return `Not saved: ${text || "refused"}. Your text is still here.`;
  return `Not done: ${text || `the speaker answered ${status}`}`;
}

export async function send(form, submitter) {
  if (form.hasAttribute("data-busy")) return; // a double tap sends once
  const action = (submitter && submitter.getAttribute("formaction")) || form.getAttribute("action") || location.pathname;
  const keeps = Boolean(submitter && submitter.hasAttribute("data-keeps")); // acts on what is saved; saves nothing
  const data = new FormData(form, submitter || null);
  const multipart = (form.getAttribute("enctype") || "").toLowerCase() === "multipart/form-data";
  const request = {
    method: "POST",
    credentials: "same-origin",
    headers: { "X-Kiosk-Fetch": "1", Accept: "text/html" },
    body: multipart ? data : new URLSearchParams([...data].filter(([, v]) => typeof v === "string")).toString(),
    signal: AbortSignal.timeout(SEND_TIMEOUT_MS),
  };
  if (!multipart) request.headers["Content-Type"] = "application/x-www-form-urlencoded";
  form.setAttribute("data-busy", "");
  if (submitter) submitter.setAttribute("aria-busy", "true");
  say(form, "busy", submitter && submitter.dataset.busy ? submitter.dataset.busy : "Working…");
  try {
    await answer(form, submitter, keeps, await fetch(action, request));
  } catch (err) {
    say(form, "error", "Not sent: the speaker did not answer. What you typed is still here; try again.");
  } finally {
    form.removeAttribute("data-busy");
    if (submitter) submitter.removeAttribute("aria-busy");
  }
}

async function answer(form, submitter, keeps, response) {
  if (response.status === 401) {
    const info = await response.json().catch(() => ({}));
    keepAndLogIn(info.login, form);
    return;
  }
  const type = response.headers.get("Content-Type") || "";
  if (!type.startsWith("text/html")) {
    say(form, "error", plainError(response.status, (await response.text()).trim().slice(0, 300)));
    return;
  }
  const target = new URL(response.url);
  if (response.ok && response.redirected && target.pathname !== location.pathname) {
    location.assign(target.href); // the form leads elsewhere (the page warns if anything else is unsaved)
    return;
  }
  const doc = new DOMParser().parseFromString(await response.text(), "text/html");
  const key = keyOf(form);
  const which = submitter ? [...form.querySelectorAll("button")].indexOf(submitter) : -1;
  const top = form.getBoundingClientRect().top;
  const typed = typedToKeep(form, response.ok && !keeps);
  swap(doc);
  putBack(typed);
  const fresh = findForm(key);
  if (fresh) window.scrollBy(0, fresh.getBoundingClientRect().top - top); // the form stays where it was on screen
  if (!response.ok) {
    showFirstError(fresh || document.querySelector("main"));
    return;
  }
  confirmDone(fresh, which, (submitter && submitter.dataset.done) || form.dataset.done || "Saved", keeps);
}

// What staff typed and did not save, in every form but the one just saved (a failed save keeps its own too).
function typedToKeep(form, saved) {
  const forms = dirtyForms().filter((f) => !(saved && f === form));
  if (!saved && !forms.includes(form)) forms.push(form);
  return forms.map((f) => ({ key: keyOf(f), fields: readFields(f) }));
}

function putBack(typed) {
  typed.forEach(({ key, fields }) => {
    const form = findForm(key);
    if (form) fillIn(form, fields);
  });
}

function confirmDone(form, which, text, keeps) {
  if (!form) { // the form is gone (a deleted line): say it where it cannot be missed
    toast(text);
    announce(text);
    return;
  }
  say(form, "done", keeps && isDirty(form) ? `${text} (the saved text; your change is not saved yet)` : text);
  const button = [...form.querySelectorAll("button")][which];
  if (button) button.focus({ preventScroll: true });
}

// The page's own script was loaded once, in <head>, and acts on the new <main> when initPage says it is there: no
// script in <main> needs to run again.
function swap(doc) {
  const main = document.querySelector("main");
  const next = doc.querySelector("main");
  if (!main || !next) return;
  // What staff typed into the page's own tools (the line filter) stays as it was.
  const tools = [...main.querySelectorAll("input[id]:not([name])")].map((el) => [el.id, el.value]);
  main.replaceWith(document.adoptNode(next));
  tools.forEach(([id, value]) => {
    const el = document.getElementById(id);
    if (el) el.value = value;
  });
  const headline = doc.getElementById("headline");
  const current = document.getElementById("headline");
  if (headline && current) current.replaceWith(document.adoptNode(headline));
  if (doc.title) document.title = doc.title;
  initPage(next);
}
