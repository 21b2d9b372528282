// Listening in the browser (the Lines page's "Listen here", the Voice page's "Hear this voice"): loading → playing
// → stopped; one at a time; a second tap stops it. A button says what to play in data-listen, read when pressed.
//
// The WAV stream is read as it arrives and played with Web Audio, so a line that is still being synthesized
// starts within a moment (an <audio> element buffers about 5 s of WAV first).

import { say } from "./forms.js";
import { loggedOut } from "./headline.js";

const preview = { button: null, controller: null, context: null };

function parseWavHeader(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, 44);
  return { channels: view.getUint16(22, true), rate: view.getUint32(24, true), bits: view.getUint16(34, true) };
}

function concatBytes(a, b) {
  const joined = new Uint8Array(a.length + b.length);
  joined.set(a, 0);
  joined.set(b, a.length);
  return joined;
}

function previewState(button, name) {
  if (!button.dataset.label) button.dataset.label = button.textContent;
  button.dataset.state = name;
  const active = name === "loading" || name === "playing";
  button.setAttribute("aria-pressed", String(active));
  button.textContent = name === "loading" ? "Loading… (tap to stop)" : name === "playing" ? "Stop" : button.dataset.label;
}

function stopPreview(finalState = "stopped") {
  const { button, controller, context } = preview;
  preview.button = preview.controller = preview.context = null;
  if (controller) controller.abort();
  if (context) context.close().catch(() => {});
  if (button) previewState(button, finalState);
}

function togglePreview(button) {
  const again = preview.button === button;
  stopPreview();
  if (again) return; // the second tap stops it
  const controller = new AbortController();
  const context = new AudioContext(); // made during the tap, so the browser lets it play
  Object.assign(preview, { button, controller, context });
  previewState(button, "loading");
  playStream(button, controller, context).catch((err) => {
    if (preview.controller !== controller) return; // stopped on purpose
    stopPreview("error");
    const row = button.closest("form") || button.parentElement;
    const text = err.unfinished ? err.message : `Cannot play it here: ${err.message}`;
    if (row && row.tagName === "FORM") say(row, "error", text);
  });
}

async function playStream(button, controller, context) {
  const chosen = button.form && button.form.querySelector("[data-listen-language]");
  const url = chosen ? `${button.dataset.listen}?language=${encodeURIComponent(chosen.value)}` : button.dataset.listen;
  const response = await fetch(url, {
    credentials: "same-origin",
    cache: "no-store",
    headers: { "X-Kiosk-Fetch": "1" }, // a session that has ended is a 401, not the login page as "audio"
    signal: controller.signal,
  });
  if (response.status === 401) {
    loggedOut();
    throw new Error("you are logged out; log in again (the button at the top keeps what you typed)");
  }
  if (!response.ok) throw new Error((await response.text()).trim().slice(0, 200) || `status ${response.status}`);
  const reader = response.body.getReader();
  let header = null;
  let rest = new Uint8Array(0);
  let when = context.currentTime + 0.1; // a short pre-roll against network jitter
  let last = null;
  for (;;) {
    const { value, done } = await readMore(reader, controller);
    if (done) break;
    let bytes = concatBytes(rest, value);
    if (!header) {
      if (bytes.length < 44) { rest = bytes; continue; }
      header = parseWavHeader(bytes);
      bytes = bytes.subarray(44);
    }
    const frameBytes = header.channels * (header.bits / 8);
    const usable = bytes.length - (bytes.length % frameBytes);
    rest = bytes.slice(usable);
    if (usable === 0) continue;
    last = scheduleChunk(context, header, bytes.slice(0, usable), when);
    when = Math.max(when, context.currentTime + 0.02) + last.buffer.duration;
    if (button.dataset.state !== "playing") {
      button.dataset.audio = context.state; // "running" unless the browser holds audio back
      previewState(button, "playing");
    }
  }
  const finish = () => { if (preview.controller === controller) stopPreview("done"); };
  if (last) last.addEventListener("ended", finish);
  else finish();
}

// The speaker breaks the stream off (no clean end) when no voice could finish the line: staff must be told so,
// rather than hear the beginning of a line as if it were the whole of it.
async function readMore(reader, controller) {
  try {
    return await reader.read();
  } catch (err) {
    if (controller.signal.aborted) throw err; // stopped on purpose
    const unfinished = new Error(
      "The line could not be finished: the stream broke off part-way (no voice could say it to the end just " +
      "now, or the connection dropped). Try again in a moment.",
    );
    unfinished.unfinished = true;
    throw unfinished;
  }
}

function scheduleChunk(context, header, bytes, when) {
  const samples = new Int16Array(bytes.buffer);
  const frames = samples.length / header.channels;
  const buffer = context.createBuffer(header.channels, frames, header.rate);
  for (let c = 0; c < header.channels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < frames; i++) channel[i] = samples[i * header.channels + c] / 32768;
  }
  const source = context.createBufferSource();
  source.buffer = buffer;
  source.connect(context.destination);
  source.start(Math.max(when, context.currentTime + 0.02));
  return source;
}

document.addEventListener("click", (event) => {
  const listen = event.target.closest("[data-listen]");
  if (!listen) return;
  event.preventDefault();
  togglePreview(listen);
});
document.addEventListener("visibilitychange", () => {
  if (document.hidden) stopPreview();
});
window.addEventListener("pagehide", () => stopPreview());
