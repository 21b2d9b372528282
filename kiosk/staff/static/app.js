// Live status and progress for the staff page. Text only ever goes in with textContent: nothing staff or
// visitors typed can become markup here.
"use strict";

function setField(root, name, text) {
  root.querySelectorAll(`[data-field="${name}"]`).forEach((el) => { el.textContent = text; });
}

function renderEvents(root, events) {
  const list = root.querySelector('[data-field="events"]');
  if (!list) return;
  list.replaceChildren(...events.slice().reverse().map((e) => {
    const item = document.createElement("li");
    const time = document.createElement("time");
    time.textContent = e.clock;
    item.append(time, " " + e.text);
    return item;
  }));
}

async function refreshStatus(section) {
  try {
    const response = await fetch(section.dataset.refresh, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) return;
    const s = await response.json();
    setField(document, "state", s.state);
    setField(document, "playing", s.playing ? `${s.playing.phrase || "text"} (${s.playing.origin})` : "\u00a0");
    setField(document, "press_to_audio", s.last_press_to_audio_ms == null ? "–" : `${Math.round(s.last_press_to_audio_ms)} ms`);
    setField(document, "last_source", s.last_trace ? s.last_trace.source : "–");
    setField(document, "underruns", String(s.underruns_total));
    setField(document, "lines_ready", String(s.cache.lines_ready));
    setField(document, "lines_configured", String(s.cache.lines_configured));
    setField(document, "engine_name", s.engine.name);
    setField(document, "engine_reachable", s.engine.reachable ? "reachable" : (s.engine.reachable === false ? "unreachable" : "not checked yet"));
    setField(document, "engine_error", s.engine.error || "");
    setField(document, "disk", String(s.disk_free_gb));
    setField(document, "uptime", s.uptime_text);
    renderEvents(document, s.events);
    const problems = document.querySelector('[data-field="problems"]');
    if (problems) {
      problems.replaceChildren(...s.problems.map((text) => {
        const item = document.createElement("li");
        item.textContent = text;
        return item;
      }));
    }
  } catch (err) {
    // the speaker restarting or the network blinking: try again on the next tick
  }
}

async function refreshProgress(section) {
  try {
    const response = await fetch(section.dataset.progress, { credentials: "same-origin", cache: "no-store" });
    if (!response.ok) return;
    const p = await response.json();
    const bar = section.querySelector("progress");
    bar.max = p.total || 1;
    bar.value = p.done;
    setField(section, "warm_text", p.text);
  } catch (err) {
    // try again on the next tick
  }
}

// Listening to a line in the browser: the WAV stream is read as it arrives and played with Web Audio, so a line
// that is still being synthesized starts within a moment (an <audio> element buffers about 5 s of WAV first).
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

async function listen(button) {
  const context = new AudioContext();
  button.dataset.state = "loading";
  const response = await fetch(button.dataset.listen, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) {
    button.dataset.state = "error";
    return;
  }
  const reader = response.body.getReader();
  let header = null;
  let rest = new Uint8Array(0);
  let when = context.currentTime + 0.1; // a short pre-roll against network jitter
  for (;;) {
    const { value, done } = await reader.read();
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
    const samples = new Int16Array(bytes.slice(0, usable).buffer);
    const frames = samples.length / header.channels;
    const buffer = context.createBuffer(header.channels, frames, header.rate);
    for (let c = 0; c < header.channels; c++) {
      const channel = buffer.getChannelData(c);
      for (let i = 0; i < frames; i++) channel[i] = samples[i * header.channels + c] / 32768;
    }
    const source = context.createBufferSource();
    source.buffer = buffer;
    source.connect(context.destination);
    when = Math.max(when, context.currentTime + 0.02);
    source.start(when);
    when += buffer.duration;
    if (button.dataset.state !== "playing") {
      button.dataset.audio = context.state; // "running" unless the browser holds audio back
      button.dataset.state = "playing";
    }
  }
  button.dataset.state = "done";
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-listen]").forEach((button) => {
    button.addEventListener("click", (event) => {
      event.preventDefault();
      listen(button).catch(() => { button.dataset.state = "error"; });
    });
  });
  const status = document.querySelector("[data-refresh]");
  if (status) setInterval(() => refreshStatus(status), 1000);
  const progress = document.querySelector("[data-progress]");
  if (progress) setInterval(() => refreshProgress(progress), 1000);
  document.querySelectorAll("[data-confirm]").forEach((button) => {
    button.addEventListener("click", (event) => {
      if (!window.confirm(button.dataset.confirm)) event.preventDefault();
    });
  });
  const volume = document.getElementById("volume");
  if (volume) volume.addEventListener("input", () => { document.getElementById("volume-out").textContent = volume.value; });
});
