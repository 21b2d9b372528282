// The Status page's history charts, drawn with uPlot (vendored: static/vendor, MIT, a classic script the page loads
// before its modules) from /status/history.json. Each chart has its numbers as a table beside it, for screen
// readers and for anyone who wants the figures.
//
// Dates and times are the speaker's, in one style ("Fri 4 Dec", "16:45", 24-hour), whatever the phone's locale or
// time zone: the days come labelled by the speaker (day_labels), and the moments on the response chart as the
// speaker's local seconds (local, now_local), read here as UTC. No axis uses uPlot's time scale, which would label
// in the browser's locale and time zone ("11/5", "4am").

import { make } from "./common.js";

const COLORS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#8a6d00", "#56b4e9", "#4d5b69"]; // colour-blind safe
const MAX_LINES = 6; // more lines than this are summed as "other lines"
const REFRESH_MS = 60000;
const AXIS = { stroke: "#535d68", grid: { stroke: "#e1e5e9", width: 1 }, ticks: { stroke: "#c5ccd3", width: 1 } };
const charts = new Map(); // chart box → { plot, observer }
let refreshTimer = null;
let pressTimer = null;

// ---- dates and times as the speaker has them (one style: kiosk/staff/timefmt.py)

const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const WEEKDAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]; // getUTCDay() order
const DAY_S = 86400;
const DAY_INCRS = [1, 2, 7, 14]; // days between labels on a per-day axis
// Seconds between labels on the response chart's axis: each a whole number of local minutes, hours or days.
const TIME_INCRS = [900, 1800, 3600, 7200, 10800, 21600, 43200, DAY_S, 2 * DAY_S, 7 * DAY_S, 14 * DAY_S];

function two(n) {
  return String(n).padStart(2, "0");
}

// `local`: the speaker's local seconds (see kiosk.staff.timefmt.local_seconds); `year`: this year at the speaker.
function dayOf(local, year) {
  const d = new Date(local * 1000);
  const shown = `${WEEKDAYS[d.getUTCDay()]} ${d.getUTCDate()} ${MONTHS[d.getUTCMonth()]}`;
  return d.getUTCFullYear() === year ? shown : `${shown} ${d.getUTCFullYear()}`;
}

function clockOf(local) {
  const d = new Date(local * 1000);
  return `${two(d.getUTCHours())}:${two(d.getUTCMinutes())}`;
}

function hourSpan(hour) {
  return `${two(hour)}:00–${two((hour + 1) % 24)}:00`;
}

// A per-day chart's x is the day's place counted back from today (0, -1, …), so that today always has its label.
function dayAxis(h) {
  const last = h.days.length - 1;
  return {
    ...AXIS,
    space: 70,
    incrs: DAY_INCRS,
    values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) && h.day_labels[t + last]) || ""),
  };
}

function dayPlaces(h) {
  return h.days.map((_, i) => i - (h.days.length - 1));
}

function boxFor(section, name) {
  return section.querySelector(`[data-chart="${name}"]`);
}

function plot(box, options, data) {
  const old = charts.get(box);
  if (old) {
    old.plot.destroy();
    old.observer.disconnect();
  }
  box.replaceChildren();
  const width = () => Math.max(240, box.clientWidth);
  const chart = new uPlot({ width: width(), height: 220, legend: { show: false }, ...options }, data, box);
  const observer = new ResizeObserver(() => chart.setSize({ width: width(), height: 220 }));
  observer.observe(box);
  charts.set(box, { plot: chart, observer });
}

function nothing(box, text) {
  const old = charts.get(box);
  if (old) {
    old.plot.destroy();
    old.observer.disconnect();
    charts.delete(box);
  }
  box.replaceChildren(make("p", { class: "muted" }, text));
}

function legend(section, name, entries) {
  const list = section.querySelector(`[data-legend="${name}"]`);
  if (!list) return;
  list.replaceChildren(...entries.map(([label, color]) => {
    const item = make("li");
    const swatch = make("span", { class: "swatch", "aria-hidden": "true" });
    swatch.style.background = color; // CSSOM, which the Content-Security-Policy allows (a style attribute it would not)
    item.append(swatch, label);
    return item;
  }));
}

function table(section, name, caption, head, rows) {
  const slot = section.querySelector(`[data-table="${name}"]`);
  if (!slot) return;
  if (!rows.length) {
    slot.replaceChildren();
    return;
  }
  const details = make("details");
  details.append(make("summary", {}, "Show the numbers"));
  const t = make("table");
  t.append(make("caption", { class: "visually-hidden" }, caption));
  const headRow = make("tr");
  head.forEach((text) => headRow.append(make("th", { scope: "col" }, text)));
  t.append(make("thead"), make("tbody"));
  t.tHead.append(headRow);
  rows.forEach((cells) => {
    const row = make("tr");
    cells.forEach((text, i) => row.append(i === 0 ? make("th", { scope: "row" }, text) : make("td", { class: "num" }, text)));
    t.tBodies[0].append(row);
  });
  details.append(t);
  slot.replaceChildren(details);
}

function sum(values) {
  return values.reduce((a, b) => a + b, 0);
}

function median(values) {
  const sorted = values.slice().sort((a, b) => a - b);
  return sorted.length ? sorted[Math.floor(sorted.length / 2)] : null;
}

// A dot only where there were presses: thirty dots on the zero line would hide the ones that matter.
function daysWithPresses(u, seriesIndex) {
  return u.data[seriesIndex].flatMap((count, i) => (count > 0 ? [i] : []));
}

function perDay(section, h) {
  const box = boxFor(section, "per_day");
  const lines = Object.entries(h.presses_per_day).sort((a, b) => sum(b[1]) - sum(a[1]));
  if (!lines.length) {
    nothing(box, "No presses in the last 30 days.");
    legend(section, "per_day", []);
    table(section, "per_day", "", [], []);
    return;
  }
  const shown = lines.slice(0, MAX_LINES);
  const rest = lines.slice(MAX_LINES);
  if (rest.length) shown.push(["other lines", h.days.map((_, i) => sum(rest.map(([, counts]) => counts[i])))]);
  const x = dayPlaces(h);
  const series = shown.map(([name], i) => ({
    label: name,
    stroke: COLORS[i % COLORS.length],
    width: 2,
    points: { show: true, size: 6, fill: COLORS[i % COLORS.length], filter: daysWithPresses },
  }));
  plot(box, {
    scales: { x: { time: false, range: [x[0] - 0.5, 0.5] }, y: { range: (u, min, max) => [0, Math.max(2, max + 1)] } },
    axes: [dayAxis(h), { ...AXIS, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }],
    series: [{}, ...series],
  }, [x, ...shown.map(([, counts]) => counts)]);
  legend(section, "per_day", shown.map(([name], i) => [`${name}: ${sum(shown[i][1])}`, COLORS[i % COLORS.length]]));
  table(section, "per_day", "Presses per line, last 30 days", ["Line", "Presses", "Busiest day"], lines.map(([name, counts]) => {
    const top = Math.max(...counts);
    return [name, String(sum(counts)), top ? `${h.day_labels[counts.indexOf(top)]} (${top})` : "–"];
  }));
}

function byHour(section, h) {
  const box = boxFor(section, "by_hour");
  const hours = [...Array(24).keys()];
  plot(box, {
    scales: { x: { time: false, range: [-0.5, 23.5] }, y: { range: (u, min, max) => [0, Math.max(2, max + 1)] } },
    axes: [
      { ...AXIS, incrs: [1, 2, 3, 6], values: (u, ticks) => ticks.map((t) => (Number.isInteger(t) ? `${two(t)}:00` : "")) },
      { ...AXIS, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] },
    ],
    series: [{}, {
      label: "Presses",
      stroke: COLORS[0],
      fill: "rgba(0, 114, 178, 0.7)",
      width: 0, // no outline: an hour without presses shows nothing
      paths: uPlot.paths.bars({ size: [0.7, 40] }),
      points: { show: false },
    }],
  }, [hours, h.presses_by_hour]);
  const rows = hours.filter((hour) => h.presses_by_hour[hour] > 0)
    .map((hour) => [hourSpan(hour), String(h.presses_by_hour[hour])]);
  table(section, "by_hour", "Presses by hour of the day", ["Hour", "Presses"], rows);
}

function response(section, h) {
  const box = boxFor(section, "response");
  const points = h.response.filter((p) => p.ms != null);
  if (!points.length) {
    nothing(box, "No response times recorded in the last 30 days.");
    legend(section, "response", []);
    table(section, "response", "", [], []);
    return;
  }
  const sources = [...new Set(points.map((p) => p.source || "unknown"))];
  const words = { cache: "saved copy", openai: "OpenAI", piper: "local voice" };
  const x = points.map((p) => p.local);
  const data = sources.map((source) => points.map((p) => ((p.source || "unknown") === source ? p.ms : null)));
  // At least the last day is shown, so that a few presses today are dots in a day, not spread over the chart. "Now"
  // is the speaker's: the phone's clock and time zone play no part.
  const now = h.now_local;
  const to = Math.max(now, x[x.length - 1]);
  const from = Math.min(x[0], now - DAY_S);
  const pad = (to - from) / 50; // a dot at either end is drawn whole
  const year = new Date(now * 1000).getUTCFullYear();
  const moments = (u, ticks, axis, space, incr) =>
    ticks.map((t) => (incr >= DAY_S || t % DAY_S === 0 ? dayOf(t, year) : clockOf(t)));
  plot(box, {
    scales: {
      x: { time: false, range: [from - pad, to + pad] },
      y: { range: (u, min, max) => [0, Math.max(100, max * 1.1)] },
    },
    axes: [
      { ...AXIS, space: 70, incrs: TIME_INCRS, values: moments },
      { ...AXIS, values: (u, ticks) => ticks.map((t) => `${t} ms`), size: 70 },
    ],
    series: [{}, ...sources.map((source, i) => ({
      label: words[source] || source,
      stroke: COLORS[i % COLORS.length],
      paths: () => null, // dots only: each is one press
      points: { show: true, size: 6, fill: COLORS[i % COLORS.length] },
    }))],
  }, [x, ...data]);
  legend(section, "response", sources.map((source, i) => [words[source] || source, COLORS[i % COLORS.length]]));
  table(section, "response", "Response time by where the audio came from", ["From", "Presses", "Typical", "Slowest"],
    sources.map((source, i) => {
      const values = data[i].filter((v) => v != null);
      return [words[source] || source, String(values.length), `${Math.round(median(values))} ms`, `${Math.round(Math.max(...values))} ms`];
    }));
}

// Visitors the motion sensor saw come close beside the buttons pressed, a pair of bars a day (only where a sensor is
// configured: the page leaves the chart out otherwise), and how many of those visitors pressed a button.
function approaches(section, h) {
  const box = boxFor(section, "approaches");
  if (!box) return;
  const came = sum(h.approaches);
  const note = section.querySelector("[data-approach-summary]");
  if (note) {
    note.textContent = came
      ? `Of ${came} ${came === 1 ? "visitor" : "visitors"} who came close, ${h.approaches_pressed} pressed a button.`
      : "No visitors came close in the last 30 days.";
  }
  if (!came && !sum(h.button_presses)) {
    nothing(box, "No visitors and no presses in the last 30 days.");
    legend(section, "approaches", []);
    table(section, "approaches", "", [], []);
    return;
  }
  const x = dayPlaces(h);
  const bars = (label, color, align) => ({
    label,
    stroke: color,
    fill: color,
    width: 0, // no outline: a day without any shows nothing
    paths: uPlot.paths.bars({ size: [0.4, 24], align }),
    points: { show: false },
  });
  plot(box, {
    scales: {
      x: { time: false, range: [x[0] - 0.5, 0.5] }, // half a day beside the first and last
      y: { range: (u, min, max) => [0, Math.max(2, max + 1)] },
    },
    axes: [dayAxis(h), { ...AXIS, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] }],
    series: [{}, bars("Came close", COLORS[0], -1), bars("Pressed a button", COLORS[1], 1)],
  }, [x, h.approaches, h.button_presses]);
  legend(section, "approaches", [
    [`Visitors who came close: ${came}`, COLORS[0]],
    [`Button presses: ${sum(h.button_presses)}`, COLORS[1]],
  ]);
  const rows = h.days.flatMap((day, i) => (h.approaches[i] || h.button_presses[i]
    ? [[h.day_labels[i], String(h.approaches[i]), String(h.button_presses[i])]] : []));
  table(section, "approaches", "Visitors who came close and button presses per day",
    ["Day", "Came close", "Button presses"], rows);
}

function summary(section, h) {
  const note = section.querySelector("[data-chart-summary]");
  if (!note) return;
  if (!h.total) {
    note.textContent = "No presses recorded in the last 30 days yet (tests from this page are not counted).";
    return;
  }
  const busiest = h.presses_by_hour.indexOf(Math.max(...h.presses_by_hour));
  const typical = median(h.response.map((p) => p.ms).filter((v) => v != null));
  note.textContent = `${h.total} presses in the last 30 days (tests from this page not counted). ` +
    `Busiest hour: ${hourSpan(busiest)}.` +
    (typical == null ? "" : ` Typical response time: ${Math.round(typical)} ms.`);
}

async function draw() {
  charts.forEach((chart, box) => {
    if (box.isConnected) return;
    chart.plot.destroy(); // its page was replaced
    chart.observer.disconnect();
    charts.delete(box);
  });
  const section = document.querySelector("[data-history]");
  if (!section || typeof uPlot === "undefined") return;
  try {
    const reply = await fetch(section.dataset.history, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-Kiosk-Poll": "idle" },
      signal: AbortSignal.timeout(8000),
    });
    if (!reply.ok) return;
    const h = await reply.json();
    if (!section.isConnected) return;
    summary(section, h);
    perDay(section, h);
    byHour(section, h);
    response(section, h);
    approaches(section, h);
    section.dataset.drawn = String(h.total);
  } catch (err) {
    // the headline says when the speaker does not answer; the charts are drawn again on the next refresh
  }
}

function schedule() {
  clearInterval(refreshTimer);
  refreshTimer = setInterval(draw, REFRESH_MS);
  draw();
}

// A button was pressed: it is in the history about a second later.
export function drawSoon() {
  clearTimeout(pressTimer);
  pressTimer = setTimeout(draw, 1500); // the history is written about once a second
}

document.addEventListener("kiosk:page", schedule);
