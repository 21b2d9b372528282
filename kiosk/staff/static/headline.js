// The headline on every page: whether all is well, kept current from /status.json; the band that says the
// connection is lost (live values are then greyed out) or that the session ended.
//
// Each status is also handed to the page's own script as a "kiosk:status" event (the status in detail).

import { POLL_TIMEOUT_MS, make, setField } from "./common.js";
import { keepAndLogIn } from "./drafts.js";

const POLL_MS = 2000; // every page: the headline
const STATUS_POLL_MS = 1000; // the status page: live values
const LOST_AFTER = 2; // failed polls in a row before the page says the connection is lost

let lastInput = 0; // when staff last did something on the page (ms)
let lastPoll = 0;

// Only what staff do keeps a session from going idle: the poll says whether they did anything since the last one.
["input", "change", "click", "keydown"].forEach((type) => {
  document.addEventListener(type, () => { lastInput = Date.now(); });
});

export function startPolling() {
  const url = document.body.dataset.poll;
  if (!url) return;
  let failures = 0;
  const tick = async () => {
    if (!document.hidden) {
      const active = lastInput > lastPoll; // staff did something since the last poll
      lastPoll = Date.now();
      try {
        const response = await fetch(url, {
          credentials: "same-origin",
          cache: "no-store",
          headers: { "X-Kiosk-Poll": active ? "active" : "idle" },
          signal: AbortSignal.timeout(POLL_TIMEOUT_MS),
        });
        if (response.status === 401) {
          failures = 0;
          loggedOut();
        } else if (!response.ok) {
          throw new Error(`status ${response.status}`);
        } else {
          const status = await response.json();
          failures = 0;
          connected(status);
        }
      } catch (err) {
        failures += 1;
        if (failures >= LOST_AFTER) lost();
      }
    }
    setTimeout(tick, document.getElementById("status") ? STATUS_POLL_MS : POLL_MS);
  };
  tick();
}

function headline(kind, text, action) {
  const box = document.getElementById("headline");
  if (!box) return;
  box.dataset.state = kind;
  setField(box, "headline", text);
  const slot = box.querySelector('[data-field="headline_action"]');
  if (!slot) return;
  slot.hidden = !action;
  if (action && !slot.firstChild) slot.append(action());
  if (!action) slot.replaceChildren();
}

function connected(s) {
  delete document.body.dataset.connection;
  headline(s.problems && s.problems.length ? "attention" : "ok", shortHeadline(s));
  document.dispatchEvent(new CustomEvent("kiosk:status", { detail: s }));
}

// As short_headline in status_page.py: the first problem without its technical detail, and how many more there are.
export function problemParts(problem) {
  const at = problem.indexOf(": ");
  return at < 0 ? [problem.replace(/\.$/, ""), ""] : [problem.slice(0, at).replace(/\.$/, ""), problem.slice(at + 2)];
}

function shortHeadline(s) {
  const problems = s.problems || [];
  if (!problems.length) return s.headline;
  const more = problems.length > 1 ? ` (and ${problems.length - 1} more)` : "";
  return `Needs attention: ${problemParts(problems[0])[0]}${more}`;
}

function lost() {
  document.body.dataset.connection = "lost"; // live values are greyed out: they are no longer current
  // Which end is down, as far as the browser knows: its own network, or the speaker.
  headline("lost", navigator.onLine === false
    ? "This phone or computer has no network (Wi-Fi off?) — retrying…"
    : "The speaker does not answer (restarting, or off the network) — retrying…");
}

export function loggedOut() {
  document.body.dataset.connection = "lost";
  headline("out", "You are logged out (the session ended).", () => {
    const button = make("button", { type: "button" }, "Log in again — what you typed is kept");
    button.addEventListener("click", () => keepAndLogIn(null, null));
    return button;
  });
}
