// Nothing lost: when the session ends, what staff typed is kept (in this tab only) over the login page and put
// back; a page left with changes not saved asks first.

import { dirtyForms, fillIn, findForm, keyOf, readFields, say } from "./forms.js";

const DRAFTS = "kiosk-drafts:"; // sessionStorage key prefix, per page
const DRAFT_MAX_AGE_MS = 24 * 3600 * 1000;

let leaving = false; // true once the page hands over to the login page with what was typed kept

export function keepAndLogIn(login, form) {
  const forms = dirtyForms();
  if (form && !forms.includes(form)) forms.push(form);
  const drafts = forms.map((f) => ({ key: keyOf(f), fields: readFields(f, { secrets: false }) }));
  if (drafts.length) {
    try {
      sessionStorage.setItem(DRAFTS + location.pathname, JSON.stringify({ at: Date.now(), drafts }));
    } catch (err) {
      // storage full or blocked: the browser will still warn before the page is left
      leaving = false;
      return;
    }
  }
  leaving = true; // kept: no "leave this page?" question
  const where = typeof login === "string" && login.startsWith("/login") ? login : null; // only ever our own page
  location.assign(where || `/login?next=${encodeURIComponent(location.pathname)}`);
}

export function restoreDrafts() {
  const name = DRAFTS + location.pathname;
  let kept = null;
  try {
    kept = JSON.parse(sessionStorage.getItem(name) || "null");
    sessionStorage.removeItem(name);
  } catch (err) {
    return;
  }
  if (!kept || !Array.isArray(kept.drafts) || Date.now() - kept.at > DRAFT_MAX_AGE_MS) return;
  const restored = kept.drafts.map(({ key, fields }) => {
    const form = findForm(key);
    if (!form || !Array.isArray(fields)) return null;
    fillIn(form, fields);
    say(form, "note", "What you typed before logging in again is back. Save it to keep it.");
    return form;
  }).filter(Boolean);
  if (restored.length) restored[0].scrollIntoView({ block: "center" });
}

window.addEventListener("beforeunload", (event) => {
  if (leaving || !dirtyForms().length) return;
  event.preventDefault();
  event.returnValue = ""; // the browser asks "leave this page? changes you made may not be saved"
});
