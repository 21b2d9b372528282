// Live captions: follows /captions/events (server-sent events, each the whole current state) and shows the sentence
// being spoken with the word being said highlighted. Word times are from the line's first sound; the server sends
// how far into the line the visitor is at the moment it sends, so the page's clock needs no agreement with the
// speaker's. EventSource reconnects by itself; after a few seconds without the speaker a calm notice shows.

const caption = document.getElementById("caption");
const title = document.getElementById("title");
const notice = document.getElementById("notice");
const NOTICE_AFTER_MS = 3000;
const SIZES = ["1.5rem", "2rem", "3rem", "4.5rem", "6rem", "8rem"];

let line = null; // {id, words, sentences, heardFrom, lang, rtl}
let shown = {sentence: -1, word: -1, id: null};
let noticeTimer = null;

// Text size and a light background, chosen on this page and kept in this browser.
function settings() {
  const root = document.documentElement;
  const contrast = document.getElementById("contrast");
  const stored = localStorage.getItem("captions.size");
  let size = stored !== null && /^[0-9]$/.test(stored) && Number(stored) < SIZES.length ? Number(stored) : null;
  const apply = () => {
    if (size !== null) root.style.setProperty("--size", SIZES[size]);
    root.classList.toggle("light", localStorage.getItem("captions.light") === "1");
    contrast.setAttribute("aria-pressed", String(root.classList.contains("light")));
  };
  const step = (delta) => {
    const current = size ?? Math.max(0, SIZES.indexOf(getComputedStyle(root).getPropertyValue("--size").trim()));
    size = Math.min(SIZES.length - 1, Math.max(0, current + delta));
    localStorage.setItem("captions.size", String(size));
    apply();
  };
  document.getElementById("smaller").addEventListener("click", () => step(-1));
  document.getElementById("larger").addEventListener("click", () => step(1));
  contrast.addEventListener("click", () => {
    localStorage.setItem("captions.light", root.classList.contains("light") ? "0" : "1");
    apply();
  });
  apply();
}

function showIdle(state) {
  line = null;
  shown = {sentence: -1, word: -1, id: null};
  caption.dataset.state = "idle";
  delete caption.dataset.sentence;
  caption.removeAttribute("lang");
  caption.removeAttribute("dir");
  caption.textContent = state.prompt || "";
}

function showLine(state) {
  const words = state.words.map(([text, startMs, sentence]) => ({text, startMs, sentence}));
  const heardFrom = performance.now() - state.position_ms;
  if (line && line.id === state.id) {
    line.words = words;
    line.heardFrom = heardFrom;
    shown.sentence = -1; // the words may have new times: draw the sentence again
    return;
  }
  line = {id: state.id, words, heardFrom, lang: state.language, rtl: state.rtl};
  shown = {sentence: -1, word: -1, id: state.id};
  caption.dataset.state = "speaking";
  caption.dataset.line = String(state.id);
  if (state.language) caption.lang = state.language; else caption.removeAttribute("lang");
  caption.dir = state.rtl ? "rtl" : "ltr";
  draw(); // at once, not at the next frame
}

// The word being said at `at` ms into the line; -1 before the first (the sentence shows, nothing is marked yet).
function currentWord(at) {
  let index = -1;
  for (let i = 0; i < line.words.length; i++) {
    if (line.words[i].startMs <= at) index = i; else break;
  }
  return index;
}

function drawSentence(sentence, word) {
  const fragment = document.createDocumentFragment();
  line.words.forEach((w, i) => {
    if (w.sentence !== sentence) return;
    const span = document.createElement("span");
    const spoken = w.text.trimEnd();
    span.textContent = spoken;
    span.dataset.word = String(i);
    if (i === word) span.className = "now";
    fragment.append(span, w.text.slice(spoken.length)); // the space after a word is not marked with it
  });
  caption.replaceChildren(fragment);
  caption.dataset.sentence = String(sentence);
}

function draw() {
  if (line && line.words.length) {
    const word = currentWord(performance.now() - line.heardFrom);
    const sentence = line.words[Math.max(0, word)].sentence;
    if (sentence !== shown.sentence) {
      drawSentence(sentence, word);
    } else if (word !== shown.word) {
      caption.querySelector(".now")?.classList.remove("now");
      caption.querySelector(`[data-word="${word}"]`)?.classList.add("now");
    }
    shown.sentence = sentence;
    shown.word = word;
  }
}

function tick() {
  draw();
  requestAnimationFrame(tick);
}

function connect() {
  const events = new EventSource("/captions/events");
  events.addEventListener("caption", (event) => {
    let state;
    try {
      state = JSON.parse(event.data);
    } catch {
      return;
    }
    title.textContent = state.title || "Live captions";
    if (state.state === "speaking" && Array.isArray(state.words)) showLine(state); else showIdle(state);
  });
  events.addEventListener("open", () => {
    clearTimeout(noticeTimer);
    noticeTimer = null;
    notice.hidden = true;
  });
  events.addEventListener("error", () => {
    if (noticeTimer === null) noticeTimer = setTimeout(() => { notice.hidden = false; }, NOTICE_AFTER_MS);
    if (events.readyState === EventSource.CLOSED) setTimeout(connect, 2000); // e.g. a 429: try again calmly
  });
}

settings();
connect();
requestAnimationFrame(tick);
