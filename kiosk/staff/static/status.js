// The Status page: its live values from each status the headline polls (every second here), the buttons lighting
// up as they are pressed, and the history charts (charts.js). Dates and times come formatted by the speaker (each
// event's "shown": "Fri 4 Dec, 16:45:03", in its own time zone), never in the phone's locale or time zone.

import { drawSoon } from "./charts.js";
import { later, make, setField, showBox } from "./common.js";
import { problemParts } from "./headline.js";

const STATE_WORDS = { idle: "ready", speaking: "speaking", missing: "missing" };
const ENGINE_WORDS = { openai: "OpenAI", piper: "Local voice" };

function updateStatusPage(s) {
  if (!document.getElementById("status")) return; // <main> is now another page's (an error)
  const speakerState = s.speaker_problem ? "missing" : s.state;
  setField(document, "state", STATE_WORDS[speakerState] || speakerState);
  document.querySelectorAll('[data-field="state"]').forEach((el) => { el.dataset.state = speakerState; });
  setField(document, "playing", s.playing ? `Saying ${s.playing.phrase || "a text"}` : "");
  setField(document, "speaker_problem", s.speaker_problem || "");
  showBox("speaker_problem", Boolean(s.speaker_problem));
  const ms = s.last_press_to_audio_ms;
  setField(document, "response_time", ms == null ? "–" : `${Math.round(ms)} ms`);
  setField(document, "last_line", s.last_line_words);
  setField(document, "stutters", String(s.underruns_total));
  setField(document, "lines_configured", String(s.cache.lines_configured));
  setField(document, "engine_name", ENGINE_WORDS[s.engine.name] || s.engine.name);
  const reachable = s.engine.reachable;
  setField(document, "engine_reachable", reachable ? "online" : reachable === false ? "cannot be reached" : "not checked yet");
  setField(document, "engine_error", s.engine.error_words || "");
  showBox("engine_error", Boolean(s.engine.error_words));
  setField(document, "disk", String(s.disk_free_gb));
  setField(document, "uptime", s.uptime_text);
  renderList("problems", s.problems, problemItem);
  showBox("problems", s.problems.length > 0);
  renderList("events", s.events.slice().reverse(), eventItem);
  showBox("no_events", s.events.length === 0);
}

function renderList(name, items, render) {
  const list = document.querySelector(`[data-field="${name}"]`);
  if (!list) return;
  const signature = JSON.stringify(items);
  if (list.dataset.signature === signature) return; // unchanged: leave it (and any details opened in it)
  if (list.dataset.signature === undefined && list.children.length === items.length) {
    list.dataset.signature = signature; // the page was just rendered with these
    return;
  }
  list.dataset.signature = signature;
  list.replaceChildren(...items.map(render));
}

function problemItem(problem) {
  const [short, detail] = problemParts(problem);
  const item = make("li");
  item.append(make("strong", {}, short));
  if (detail) {
    const details = make("details");
    details.append(make("summary", {}, "Details"), make("p", {}, detail));
    item.append(details);
  }
  return item;
}

function eventItem(e) {
  const item = make("li");
  item.append(make("time", { datetime: `${e.date}T${e.clock}` }, e.shown), ` ${e.text}`);
  if (e.count > 1) item.append(" ", make("span", { class: "count" }, `×${e.count}`));
  return item;
}

function pressedAgo(at, now) {
  if (at == null) return "Not pressed since the speaker started";
  const s = Math.max(0, Math.floor(now - at));
  if (s < 60) return `Pressed ${s} s ago`;
  if (s < 3600) return `Pressed ${Math.floor(s / 60)} min ago`;
  return `Pressed ${Math.floor(s / 3600)} h ago`;
}

function updateButtons(s) {
  const list = (s.buttons && s.buttons.list) || [];
  list.forEach((b) => {
    const card = document.querySelector(`[data-button="${b.pin}"]`);
    if (!card) return;
    const last = b.last_pressed == null ? "" : String(b.last_pressed);
    if (card.dataset.lastPressed !== last) {
      card.dataset.lastPressed = last;
      card.classList.add("lit"); // a press is seen on the page: staff can tell which button is which
      later(card, 2000, () => card.classList.remove("lit"));
      drawSoon(); // the press is in the charts too
    }
    setField(card, "pressed_ago", pressedAgo(b.last_pressed, s.server_time));
  });
}

document.addEventListener("kiosk:status", (event) => {
  const s = event.detail;
  updateStatusPage(s);
  setField(document, "lines_ready", String(s.cache.lines_ready));
  updateButtons(s);
});
