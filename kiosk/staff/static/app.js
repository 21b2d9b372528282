// The staff pages' shared script, loaded by every page (base.html); a page with script of its own loads that too
// (status.js, lines.js, voice.js, volume.js, schedule.js; Account and Login need nothing more than this). Every page
// works without them (plain forms and links); with them, forms answer in place, nothing typed is lost, every page
// shows whether the speaker is well, and lines can be heard in the browser.
//
// Plain ES modules, served as they are (no bundler, no build step): the Pi serves them offline, and the
// Content-Security-Policy's script-src 'self' allows them. Only the pages' templates name a module with its
// version (?v=…), and no module imports one a template names, so that none is ever loaded twice.
//
// Text goes into the page with textContent only: nothing staff or visitors typed ever becomes markup here.

import { later } from "./common.js";
import { restoreDrafts } from "./drafts.js";
import { edited, initPage, showFirstError, trackedForms } from "./forms.js";
import { startPolling } from "./headline.js";
import { send } from "./send.js";

function onInput(event) {
  edited(event.target.form);
}

// A risky button (Delete) asks with its first tap and acts on the second: no dialog, no accidental delete.
function onClick(event) {
  const risky = event.target.closest("[data-confirm]");
  if (risky && !risky.dataset.armed) {
    event.preventDefault();
    risky.dataset.armed = "yes";
    risky.dataset.label = risky.textContent;
    risky.textContent = risky.dataset.confirm;
    later(risky, 5000, () => {
      delete risky.dataset.armed;
      risky.textContent = risky.dataset.label;
    });
  }
}

function onSubmit(event) {
  const form = event.target;
  if (!trackedForms().includes(form)) return; // login, logout, downloads: ordinary navigation
  event.preventDefault();
  send(form, event.submitter);
}

document.addEventListener("input", onInput);
document.addEventListener("change", onInput);
document.addEventListener("click", onClick);
document.addEventListener("submit", onSubmit);
// Modules run once the page is parsed, in the order the page names them; the page's own module has registered for
// "kiosk:page" by the time this runs.
document.addEventListener("DOMContentLoaded", () => {
  initPage(document);
  restoreDrafts();
  showFirstError(document.querySelector("main"));
  startPolling();
});
