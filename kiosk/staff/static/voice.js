// The Voice page: each "Hear this voice" button plays the voice chosen beside it (listen.js plays it, reading
// data-listen when pressed), and the bar of lines made ready offline in this voice moves as they are made.

import { POLL_TIMEOUT_MS, setField } from "./common.js";
import "./listen.js";

const PROGRESS_MS = 1000;

// Listened for on the document, not on each select: a <main> sent back after a save has new ones.
document.addEventListener("change", (event) => {
  const select = event.target;
  if (!(select instanceof HTMLSelectElement) || !select.id) return;
  document.querySelectorAll(`[data-sample-for="${CSS.escape(select.id)}"]`).forEach((button) => {
    const query = new URLSearchParams({ engine: button.dataset.sample, voice: select.value });
    button.dataset.listen = `/voice/sample.wav?${query}`;
  });
});

// The warm-up progress.
setInterval(async () => {
  const section = document.querySelector("[data-progress]");
  if (!section || document.hidden) return;
  try {
    const response = await fetch(section.dataset.progress, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-Kiosk-Poll": "idle" },
      signal: AbortSignal.timeout(POLL_TIMEOUT_MS),
    });
    if (!response.ok) return;
    const p = await response.json();
    const bar = section.querySelector("progress");
    if (bar) { bar.max = p.total || 1; bar.value = p.done; }
    setField(section, "warm_text", p.text);
  } catch (err) {
    // the headline says when the speaker does not answer
  }
}, PROGRESS_MS);
