// The staff page's script. Every page works without it (plain forms and links); with it, forms answer in place,
// nothing typed is lost, every page shows whether the speaker is well, and lines can be heard in the browser.
//
// Text goes into the page with textContent only: nothing staff or visitors typed ever becomes markup here. After a
// save, <main> is replaced by the page the speaker sent back (rendered by its own templates, which escape
// everything) — the same HTML a reload would show.
"use strict";

(() => {
  const POLL_MS = 2000; // every page: the headline
  const STATUS_POLL_MS = 1000; // the status page: live values
  const LOST_AFTER = 2; // failed polls in a row before the page says the connection is lost
  const POLL_TIMEOUT_MS = 4000;
  const SEND_TIMEOUT_MS = 20000;
  const DRAFTS = "kiosk-drafts:"; // sessionStorage key prefix, per page
  const DRAFT_MAX_AGE_MS = 24 * 3600 * 1000;
  const NOT_FIELDS = new Set(["hidden", "submit", "button", "reset", "image", "file"]);

  const state = {
    clean: new WeakMap(), // form → its fields as the speaker last sent them
    timers: new WeakMap(), // element → timer that will undo a passing highlight or message
    leaving: false, // true once the page hands over to the login page with what was typed kept
    lastInput: 0, // when staff last did something on the page (ms)
    lastPoll: 0,
  };

  // ---- small helpers

  function make(tag, attributes = {}, text = "") {
    const el = document.createElement(tag);
    Object.entries(attributes).forEach(([name, value]) => el.setAttribute(name, value));
    el.textContent = text;
    return el;
  }

  function setField(root, name, text) {
    root.querySelectorAll(`[data-field="${name}"]`).forEach((el) => {
      if (el.textContent !== text) el.textContent = text;
    });
  }

  function showBox(name, show) {
    document.querySelectorAll(`[data-field-box="${name}"]`).forEach((el) => { el.hidden = !show; });
  }

  function later(el, ms, undo) {
    clearTimeout(state.timers.get(el));
    state.timers.set(el, setTimeout(undo, ms));
  }

  function announce(text) {
    const region = document.getElementById("announce");
    if (!region) return;
    region.textContent = "";
    requestAnimationFrame(() => { region.textContent = text; }); // a change, so screen readers say it again
  }

  function toast(text) {
    let box = document.querySelector(".toast");
    if (!box) {
      box = make("div", { class: "toast", "aria-hidden": "true" }); // said through #announce
      document.body.append(box);
    }
    box.textContent = text;
    box.hidden = false;
    later(box, 5000, () => { box.hidden = true; });
  }

  // ---- forms: what is in them, and whether it differs from what the speaker has

  function trackedForms(root = document) {
    return [...root.querySelectorAll("form")].filter(
      (form) => (form.getAttribute("method") || "").toLowerCase() === "post" && !form.hasAttribute("data-plain"),
    );
  }

  function controls(form) {
    return [...form.elements].filter(
      (el) => el.name && el.matches("input, textarea, select") && !NOT_FIELDS.has(el.type),
    );
  }

  function readFields(form, { secrets = true } = {}) {
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

  function snapshot(form) {
    return JSON.stringify(readFields(form).map((field) => field.value));
  }

  // What the form holds as saved: a field the server filled with something not saved yet (a translation draft)
  // says what is saved in data-saved, so that the form counts as unsaved until Save.
  function savedSnapshot(form) {
    return JSON.stringify(
      controls(form).map((el) => {
        if (el.dataset && el.dataset.saved !== undefined) return el.dataset.saved;
        return el.type === "checkbox" || el.type === "radio" ? el.checked : el.value;
      }),
    );
  }

  // A form is known by its action and its place among forms with the same action, in this page or the next.
  function keyOf(form) {
    const action = form.getAttribute("action") || "";
    const same = trackedForms().filter((f) => (f.getAttribute("action") || "") === action);
    return `${action}#${same.indexOf(form)}`;
  }

  function findForm(key) {
    return trackedForms().find((form) => keyOf(form) === key) || null;
  }

  function isDirty(form) {
    return state.clean.has(form) && snapshot(form) !== state.clean.get(form);
  }

  function dirtyForms() {
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

  // ---- messages beside a form: saving…, saved, not saved

  function say(form, kind, text) {
    form.querySelectorAll(".form-msg").forEach((old) => old.remove());
    const message = make("p", { class: "form-msg", "data-kind": kind, role: kind === "error" ? "alert" : "status" }, text);
    const anchor = actionsOf(form);
    if (anchor) anchor.after(message);
    else form.append(message);
    if (kind !== "busy") announce(text);
    if (kind === "done") later(message, 8000, () => message.remove());
    if (kind === "error") message.scrollIntoView({ block: "nearest" });
    return message;
  }

  function plainError(status, text) {
    if (status === 413) return "Not saved: that is too much text to send at once.";
    if (status === 403) return `Not saved: ${text || "refused"}. Your text is still here.`;
    return `Not done: ${text || `the speaker answered ${status}`}`;
  }

  // ---- sending a form in place

  async function send(form, submitter) {
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
      if (!form) return;
      writeFields(form, fields); // still marked "Not saved yet"
      refreshDirty(form);
      updateLengths(form);
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
    rerunScripts(next);
    initPage(next);
  }

  // Scripts that arrive in a new <main> do not run by themselves; a page's own script (voice.js) must see its new
  // elements, so it is loaded again (same file, same origin: the Content-Security-Policy allows it).
  function rerunScripts(root) {
    root.querySelectorAll("script[src]").forEach((old) => {
      const script = make("script", { src: old.getAttribute("src") });
      old.replaceWith(script);
    });
  }

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

  function showFirstError(root) {
    const error = root && root.querySelector(".error");
    if (!error) return;
    error.scrollIntoView({ block: "center" });
    const control = error.id && document.querySelector(`[aria-describedby~="${CSS.escape(error.id)}"]`);
    if (control) control.focus({ preventScroll: true });
  }

  // ---- nothing lost: the session ended, or the page is left with changes not saved

  function keepAndLogIn(login, form) {
    const forms = dirtyForms();
    if (form && !forms.includes(form)) forms.push(form);
    const drafts = forms.map((f) => ({ key: keyOf(f), fields: readFields(f, { secrets: false }) }));
    if (drafts.length) {
      try {
        sessionStorage.setItem(DRAFTS + location.pathname, JSON.stringify({ at: Date.now(), drafts }));
      } catch (err) {
        // storage full or blocked: the browser will still warn before the page is left
        state.leaving = false;
        return;
      }
    }
    state.leaving = true; // kept: no "leave this page?" question
    const where = typeof login === "string" && login.startsWith("/login") ? login : null; // only ever our own page
    location.assign(where || `/login?next=${encodeURIComponent(location.pathname)}`);
  }

  function restoreDrafts() {
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
      writeFields(form, fields);
      refreshDirty(form);
      updateLengths(form);
      say(form, "note", "What you typed before logging in again is back. Save it to keep it.");
      return form;
    }).filter(Boolean);
    if (restored.length) restored[0].scrollIntoView({ block: "center" });
  }

  window.addEventListener("beforeunload", (event) => {
    if (state.leaving || !dirtyForms().length) return;
    event.preventDefault();
    event.returnValue = ""; // the browser asks "leave this page? changes you made may not be saved"
  });

  // ---- the headline on every page, and the status page's live values

  function startPolling() {
    const url = document.body.dataset.poll;
    if (!url) return;
    let failures = 0;
    const tick = async () => {
      if (!document.hidden) {
        const active = state.lastInput > state.lastPoll; // staff did something since the last poll
        state.lastPoll = Date.now();
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
    updateStatusPage(s);
    updateReadiness(s);
    updateButtons(s);
    document.dispatchEvent(new CustomEvent("kiosk:status", { detail: s }));
  }

  // As pages.py short_headline: the first problem without its technical detail, and how many more there are.
  function problemParts(problem) {
    const at = problem.indexOf(": ");
    return at < 0 ? [problem.replace(/\.$/, ""), ""] : [problem.slice(0, at).replace(/\.$/, ""), problem.slice(at + 2)];
  }

  function shortHeadline(s) {
    const problems = s.problems || [];
    if (!problems.length) return s.headline;
    const more = problems.length > 1 ? ` (and ${problems.length - 1} more)` : "";
    return `Needs attention: ${problemParts(problems[0])[0]}${more}`;
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

  function lost() {
    document.body.dataset.connection = "lost"; // live values are greyed out: they are no longer current
    headline("lost", "Connection lost — retrying…");
  }

  function loggedOut() {
    document.body.dataset.connection = "lost";
    headline("out", "You are logged out (the session ended).", () => {
      const button = make("button", { type: "button" }, "Log in again — what you typed is kept");
      button.addEventListener("click", () => keepAndLogIn(null, null));
      return button;
    });
  }

  const STATE_WORDS = { idle: "ready", speaking: "speaking", missing: "missing" };
  const SOURCE_WORDS = { cache: "a saved copy (offline)", openai: "OpenAI (online)", piper: "the local voice" };
  const ENGINE_WORDS = { openai: "OpenAI", piper: "Local voice" };

  function updateStatusPage(s) {
    if (!document.getElementById("status")) return;
    const speakerState = s.speaker_problem ? "missing" : s.state;
    setField(document, "state", STATE_WORDS[speakerState] || speakerState);
    document.querySelectorAll('[data-field="state"]').forEach((el) => { el.dataset.state = speakerState; });
    setField(document, "playing", s.playing ? `Saying ${s.playing.phrase || "a text"}` : "");
    setField(document, "speaker_problem", s.speaker_problem || "");
    showBox("speaker_problem", Boolean(s.speaker_problem));
    const ms = s.last_press_to_audio_ms;
    setField(document, "response_time", ms == null ? "–" : `${Math.round(ms)} ms`);
    const source = s.last_trace ? s.last_trace.source : null;
    setField(document, "last_source", source ? SOURCE_WORDS[source] || source : "–");
    setField(document, "stutters", String(s.underruns_total));
    setField(document, "lines_configured", String(s.cache.lines_configured));
    setField(document, "engine_name", ENGINE_WORDS[s.engine.name] || s.engine.name);
    const reachable = s.engine.reachable;
    setField(document, "engine_reachable", reachable ? "online" : reachable === false ? "cannot be reached" : "not checked yet");
    setField(document, "engine_error", s.engine.error || "");
    showBox("engine_error", Boolean(s.engine.error));
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

  function eventItem(e) {
    const item = make("li");
    item.append(make("time", { datetime: `${e.date}T${e.clock}` }, `${e.date} ${e.clock}`), ` ${e.text}`);
    if (e.count > 1) item.append(" ", make("span", { class: "count" }, `×${e.count}`));
    return item;
  }

  function updateReadiness(s) {
    const ready = new Set(s.cache.ready_ids || []);
    setField(document, "lines_ready", String(s.cache.lines_ready));
    document.querySelectorAll("[data-ready-for]").forEach((tag) => {
      const yes = ready.has(tag.dataset.readyFor);
      if (tag.dataset.ready === (yes ? "yes" : "no")) return;
      tag.dataset.ready = yes ? "yes" : "no";
      tag.textContent = yes ? "Ready offline" : "Not ready offline yet";
    });
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
        document.dispatchEvent(new CustomEvent("kiosk:pressed", { detail: b }));
      }
      setField(card, "pressed_ago", pressedAgo(b.last_pressed, s.server_time));
    });
  }

  // ---- listening in the browser: loading → playing → stopped; one at a time; a second tap stops it
  //
  // The WAV stream is read as it arrives and played with Web Audio, so a line that is still being synthesized
  // starts within a moment (an <audio> element buffers about 5 s of WAV first).

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
      if (row && row.tagName === "FORM") say(row, "error", `Cannot play it here: ${err.message}`);
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
      last = schedule(context, header, bytes.slice(0, usable), when);
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

  function schedule(context, header, bytes, when) {
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

  // ---- the Lines page: length as staff type, a filter for long lists, what each button says

  function spokenLength(chars, perChar) {
    const seconds = Math.round(chars * perChar);
    const minutes = Math.floor(seconds / 60);
    return minutes ? `${minutes} min ${seconds % 60} s` : `${Math.max(seconds, 1)} s`;
  }

  function updateLength(textarea) {
    const note = document.getElementById(textarea.dataset.length);
    const list = document.querySelector("[data-s-per-char]");
    if (!note || !list) return;
    const perChar = Number(list.dataset.sPerChar);
    const long = Number(list.dataset.longS);
    const chars = textarea.value.length;
    const isLong = Math.round(chars * perChar) > long;
    note.classList.toggle("warning", isLong);
    const words = chars ? `${chars} characters, about ${spokenLength(chars, perChar)} to say` : "0 characters";
    note.textContent = isLong ? `${words} — long: many visitors walk on before the end` : words;
  }

  function updateLengths(root) {
    root.querySelectorAll("textarea[data-length]").forEach(updateLength);
  }

  function applyFilter(input) {
    const query = input.value.trim().toLowerCase();
    const items = [...document.querySelectorAll(input.dataset.filter)];
    let shown = 0;
    items.forEach((item) => {
      const match = !query || item.textContent.toLowerCase().includes(query) ||
        [...item.querySelectorAll("textarea")].some((t) => t.value.toLowerCase().includes(query));
      item.hidden = !match;
      shown += match ? 1 : 0;
    });
    setField(document, "filter_count", query ? `Showing ${shown} of ${items.length} lines` : "");
  }

  function updateSays(select) {
    const note = document.getElementById(select.dataset.says);
    const option = select.selectedOptions[0];
    if (note && option) note.textContent = `“${option.dataset.text || ""}”`;
  }

  // ---- a page (or a new <main>) is ready

  function initPage(root) {
    trackedForms(root).forEach((form) => {
      state.clean.set(form, savedSnapshot(form));
      refreshDirty(form);
    });
    linkErrors(root);
    root.querySelectorAll("[data-filter-box]").forEach((box) => { box.hidden = false; });
    root.querySelectorAll("[data-filter]").forEach(applyFilter);
    document.dispatchEvent(new CustomEvent("kiosk:page", { detail: root }));
  }

  function onInput(event) {
    state.lastInput = Date.now();
    const el = event.target;
    if (el.matches && el.matches("textarea[data-length]")) updateLength(el);
    if (el.matches && el.matches("[data-filter]")) applyFilter(el);
    if (el.matches && el.matches("select[data-says]")) updateSays(el);
    if (el.type === "range" && el.id) {
      document.querySelectorAll(`output[for~="${CSS.escape(el.id)}"]`).forEach((out) => { out.textContent = el.value; });
    }
    const form = el.form;
    if (form && state.clean.has(form)) {
      refreshDirty(form);
      form.querySelectorAll('.form-msg[data-kind="done"], .form-msg[data-kind="note"]').forEach((m) => m.remove());
    }
  }

  function onClick(event) {
    state.lastInput = Date.now();
    const listen = event.target.closest("[data-listen]");
    if (listen) {
      event.preventDefault();
      togglePreview(listen);
      return;
    }
    const risky = event.target.closest("[data-confirm]");
    if (risky && !risky.dataset.armed) {
      event.preventDefault(); // the first tap asks, the second does it: no dialog, no accidental delete
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
  document.addEventListener("keydown", () => { state.lastInput = Date.now(); });
  document.addEventListener("DOMContentLoaded", () => {
    initPage(document);
    restoreDrafts();
    showFirstError(document.querySelector("main"));
    startPolling();
    document.addEventListener("visibilitychange", () => {
      if (document.hidden) stopPreview();
    });
  });
  window.addEventListener("pagehide", () => stopPreview());

  // the Voice page's warm-up progress
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
  }, 1000);
})();
