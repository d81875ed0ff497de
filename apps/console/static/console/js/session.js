// /console/sessions/{id}/: live transcript, queue and history, presence, the nudge form.
import { clock, el, millis, money, refreshAges, refreshClocks, tickAges } from "./dom.js";
import { connectLive, showState } from "./live.js";
import { setUpTools, toolEntry } from "./tools.js";

const main = document.querySelector("main");
const sessionId = main.dataset.sessionId;
const me = main.dataset.username;
const canSteer = main.dataset.canSteer === "true";
const RELAYED = main.dataset.kind === "relay"; // not an attached call (WebRTC, SIP)
const OVER = new Set(["ended", "failed"]);
let over = OVER.has(main.dataset.status);
const csrf = document.querySelector("input[name=csrfmiddlewaretoken]")?.value;

const transcript = document.querySelector("[data-transcript]");
const requestsBody = document.querySelector("[data-requests]");
const presence = document.querySelector("[data-presence]");
const toasts = document.querySelector("[data-toasts]");
const form = document.querySelector("[data-nudge-form]");
const OPERATORS = new Set(["console", "api"]);
const TERMINAL = new Set(["completed", "cancelled", "incomplete", "failed"]);

// ---------------------------------------------------------------- requests

const requests = new Map();
const cancelledHere = new Set(); // requests this page asked to cancel: their end is news to it
for (const request of JSON.parse(document.getElementById("requests-data").textContent)) {
  requests.set(request.id, request);
}

function isoAt(seconds) {
  return new Date(seconds * 1000).toISOString();
}

// Each Cancel is named for its request: "Cancel", what was asked and when (the row's own words).
function namedFor(request) {
  const id = `cancel-${request.id}`;
  return { id, "aria-labelledby": `${id} asked-${request.id} when-${request.id}` };
}

function cancelForm(request, confirmed) {
  const named = confirmed ? {} : namedFor(request);
  const button = el("button", { type: "submit", class: confirmed ? "danger small" : "link", text: confirmed ? "Cancel the caller’s request" : "Cancel", ...named });
  const form = el("form", { method: "post", action: `/console/requests/${encodeURIComponent(request.id)}/cancel` },
    el("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrf }),
    confirmed ? [el("input", { type: "hidden", name: "confirm", value: "caller" }), el("p", { class: "small", text: "This is the caller’s own request." })] : null,
    button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    cancelledHere.add(request.id);
    const answer = await post(form.action, new FormData(form));
    if (!answer.ok) toast(answer.errors?.form || "Could not cancel.", "bad");
    button.disabled = false;
  });
  return form;
}

// An operator's own request cancels at once; a caller's (or the server's) is theirs, so
// cancelling it is a separate action behind a disclosure that says whose it is.
function cancelControl(request) {
  if (!canSteer || over || request.status !== "queued") return null;
  if (OPERATORS.has(request.origin)) return cancelForm(request, false);
  return el("details", { class: "confirm" }, el("summary", { text: "Cancel…", ...namedFor(request) }), cancelForm(request, true));
}

// A row stacked to fit the card (as parts/request_row.html renders it): what was asked on
// top, who and when below; the status and latency on the right; a cancel under them.
function requestRow(request) {
  const latency = requestToStart(request);
  const pairs = Object.entries(request.metadata || {}).map(([k, v]) => `${k}=${v}`);
  // One line of it shows (console.css): the whole of it is its title.
  const metadata = pairs.length
    ? el("small", { class: "req-metadata", title: pairs.join(" ") }, pairs.map((pair) => `${pair} `)) : null;
  const reason = request.error?.code || request.error_code;
  // As parts/request_row.html and refreshClocks() have it: `dateTime` is the attribute's
  // property, and the full moment is the title (the row shows the time of day only).
  const when = el("time", { class: "muted", id: `when-${request.id}`, dateTime: request.created_at, "data-clock": "",
    title: new Date(request.created_at).toISOString(), text: clock(request.created_at) });
  const asked = request.instructions
    ? el("span", { class: "asked", id: `asked-${request.id}`, title: request.instructions.slice(0, 500), text: truncate(request.instructions, 120) })
    : el("span", { class: "asked muted", id: `asked-${request.id}`, text: OPERATORS.has(request.origin) ? "no instructions" : `the ${request.origin}’s own response` });
  return el("tr", { "data-request": request.id, "data-status": request.status },
    el("td", { class: "req" }, asked,
      el("span", { class: "req-meta" }, el("span", { class: "origin", text: request.origin }), ` ${request.requested_by || ""} · `, when,
        request.conversation === "none" ? [" ", el("span", { class: "badge oob", text: "out of band" })] : null),
      metadata),
    el("td", { class: "state" }, el("span", { class: `badge status-${request.status}`, text: request.status }),
      reason ? el("small", { class: "reason", title: request.error?.message, text: reason }) : null,
      el("span", { class: "num latency", title: "request → start", text: latency === null ? "" : `${latency} ms` })),
    el("td", { class: "act" }, cancelControl(request)));
}

// Request → start (ms) of a request the console sent (as views.sent_here decides): null for one
// not started yet, and for a response the server or an attached call's caller started, seen
// only as it started.
function requestToStart(request) {
  const sentHere = request.origin === "caller" ? RELAYED : request.origin !== "server";
  return sentHere ? millis(request.created_at, request.started_at) : null;
}

function truncate(text, n) {
  return text.length > n ? `${text.slice(0, n - 1)}…` : text;
}

// The queue first, oldest on top (the order it is sent in), then the history, newest first
// (as views.queue_first orders the page): a long history never pushes the queue off screen.
function shownOrder(a, b) {
  const doneA = TERMINAL.has(a.status), doneB = TERMINAL.has(b.status);
  if (doneA !== doneB) return doneA ? 1 : -1;
  const order = Date.parse(a.created_at) - Date.parse(b.created_at) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
  return doneA ? -order : order;
}

// Rows are moved, not rebuilt, so an open "Cancel…" stays open; a control the operator is on
// keeps the focus that moving its row took away.
function placeRows() {
  const rows = [...requestsBody.children];
  const sorted = rows.slice().sort((x, y) => shownOrder(requests.get(x.dataset.request), requests.get(y.dataset.request)));
  if (sorted.some((row, i) => row !== rows[i])) {
    const focused = document.activeElement;
    requestsBody.append(...sorted);
    if (focused !== document.activeElement && requestsBody.contains(focused)) {
      focused.focus({ preventScroll: true });
    }
  }
  let seenWaiting = false;
  for (const row of sorted) {
    const done = TERMINAL.has(requests.get(row.dataset.request).status);
    row.classList.toggle("history-start", done && seenWaiting);
    if (done) seenWaiting = false;
    else seenWaiting = true;
  }
}

// A row redrawn under the keyboard's focus (its cancel control, say, just used) gives the
// focus to its new self's control, or to the card when it has none: not back to the top.
function renderRequest(request) {
  const fresh = requestRow(request);
  const old = requestsBody.querySelector(`tr[data-request="${CSS.escape(request.id)}"]`);
  // A cancel on its way disabled its button, which took the focus away: it was there too.
  const hadFocus = old?.contains(document.activeElement)
    || (document.activeElement === document.body && old?.querySelector("button:disabled"));
  if (old) old.replaceWith(fresh);
  else requestsBody.append(fresh);
  placeRows();
  if (hadFocus) (fresh.querySelector("summary, button") ?? requestsBody.closest("[tabindex]")).focus();
}

function renderAllRequests() {
  requestsBody.replaceChildren(...[...requests.values()].map(requestRow));
  placeRows();
  drawChart();
}

// A status change from the session's actor (ordered), or the answer to our own POST; `quiet`
// for the snapshot's latest changes, which the page may have missed but were no news.
function applyRequest(message, quiet = false) {
  const known = requests.get(message.request_id);
  // The same status again: the page already shows it so (a watch starts with the latest
  // requests as they are now), unless the message brings more, as a response that came after
  // its request had failed does (its id, the longer error message). That is no news to say.
  if (known?.status === message.status) {
    if (!addsToRequest(known, message)) return;
    quiet = true;
  }
  // A request first seen here: stored at `created_at` (the actor's message and the catch-up
  // from the table say), which may be well before this change.
  const request = known ?? { id: message.request_id, created_at: isoAt(message.created_at ?? message.at) };
  for (const key of ["origin", "requested_by", "instructions", "metadata", "conversation", "response_id"]) {
    if (message[key] !== undefined && message[key] !== null) request[key] = message[key];
  }
  if (request.status !== message.status) {
    // A status's moment is when it was reached, not when more was learnt of it later.
    if (message.status === "sent") request.sent_at = isoAt(message.at);
    if (message.status === "in_progress") request.started_at = isoAt(message.at);
    if (TERMINAL.has(message.status)) request.finished_at = isoAt(message.at);
  }
  if (message.started_at && !request.started_at) request.started_at = isoAt(message.started_at);
  request.status = message.status;
  if (message.error_code) request.error = { code: message.error_code, message: message.error_message };
  requests.set(request.id, request);
  renderRequest(request);
  drawChart();
  if (TERMINAL.has(request.status) || request.status === "in_progress") remarkEntries(request);
  if (!quiet) sayRequest(request);
  if (!quiet && !known && OPERATORS.has(request.origin) && request.requested_by !== me) {
    const what = request.instructions ? `: “${request.instructions.slice(0, 60)}”` : "";
    toast(`${request.requested_by || "Someone"} asked for a response${what}`, "info");
  }
}

// Whether a message of a request's unchanged status tells the page something it lacks.
function addsToRequest(request, message) {
  const error = request.error ?? {};
  return (message.response_id && message.response_id !== request.response_id)
    || (message.error_code && message.error_code !== error.code)
    || (message.error_message && message.error_message !== error.message);
}

// ---------------------------------------------------------------- chart

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

// A round top for the y axis: 1, 2 or 5 times a power of ten.
function niceTop(value) {
  const power = 10 ** Math.floor(Math.log10(Math.max(value, 1)));
  return [1, 2, 5, 10].map((m) => m * power).find((top) => top >= value);
}

// Latency from request to start (ms), one point per request that started, in order; operators'
// requests filled, the caller's hollow. Plain SVG: axes with ticks and units, no library.
function drawChart() {
  const chart = document.querySelector("[data-latency-chart]");
  const caption = document.querySelector("[data-latency-caption]");
  const started = [...requests.values()]
    .map((r) => ({ request: r, ms: requestToStart(r) }))
    .filter((point) => point.ms !== null);
  // The left margin holds the widest tick ("500000"); the unit sits above the axis, right of
  // it, clear of the ticks. x: the first and last points have their number under them.
  const W = 320, H = 100, left = 46, right = 10, top = 14, bottom = 26;
  const plotW = W - left - right, plotH = H - top - bottom;
  const maxMs = niceTop(Math.max(10, ...started.map((p) => p.ms))); // at least 0–10 ms: distinct ticks
  const parts = [];
  for (const tick of [0, maxMs / 2, maxMs]) {
    const y = top + plotH - (tick / maxMs) * plotH;
    parts.push(svg("line", { x1: left, x2: W - right, y1: y, y2: y, class: "grid" }));
    parts.push(svg("text", { x: left - 4, y: y + 4, class: "tick", "text-anchor": "end" }, `${Math.round(tick)}`));
  }
  parts.push(svg("line", { x1: left, x2: left, y1: top, y2: top + plotH, class: "axis" }));
  parts.push(svg("line", { x1: left, x2: W - right, y1: top + plotH, y2: top + plotH, class: "axis" }));
  parts.push(svg("text", { x: left + 4, y: top - 3, class: "unit", "data-unit": "y" }, "ms"));
  parts.push(svg("text", { x: left + plotW / 2, y: H - 3, class: "unit", "text-anchor": "middle" }, "request (in order)"));
  const n = started.length;
  const x = (i) => left + (n > 1 ? 8 + (i / (n - 1)) * (plotW - 16) : plotW / 2);
  if (n) {
    parts.push(svg("text", { x: x(0), y: top + plotH + 12, class: "tick", "text-anchor": "middle", "data-x-tick": "1" }, "1"));
    if (n > 1) parts.push(svg("text", { x: x(n - 1), y: top + plotH + 12, class: "tick", "text-anchor": "middle", "data-x-tick": `${n}` }, `${n}`));
  }
  started.forEach((point, i) => {
    const y = top + plotH - (point.ms / maxMs) * plotH;
    const dot = svg("circle", { cx: x(i), cy: y, r: 3.5, class: OPERATORS.has(point.request.origin) ? "point operator" : "point caller" });
    dot.append(svg("title", {}, `${point.request.origin} ${point.request.requested_by || ""}: ${point.ms} ms`));
    parts.push(dot);
  });
  chart.replaceChildren(svg("title", { id: "chart-title" }, "Request to start latency, one point per request"), ...parts);
  if (!n) {
    const none = over ? "no request started" : "no request has started yet";
    caption.textContent = `Request → start latency: ${none}.`;
    return;
  }
  const nudges = started.filter((p) => OPERATORS.has(p.request.origin)).map((p) => p.ms).sort((a, b) => a - b);
  const median = nudges.length ? `; nudges' median ${nudges[Math.floor(nudges.length / 2)]} ms` : "";
  caption.textContent = `Request → start latency, ${n} request${n > 1 ? "s" : ""} (● operators, ○ caller)${median}.`;
}

// ---------------------------------------------------------------- transcript

const entries = new Map();
const entryData = new Map();

// The request an agent turn answered: named by the entry (`request_id`), or found by its response.
function requestOf(entry) {
  if (entry.request_id && requests.has(entry.request_id)) return requests.get(entry.request_id);
  if (!entry.response_id) return null;
  for (const request of requests.values()) if (request.response_id === entry.response_id) return request;
  return null;
}

function entryNode(entry) {
  if (entry.role === "tool") return toolEntry(entry);
  const who = entry.role === "agent" ? "agent" : entry.role === "system" ? "note" : "caller";
  const request = entry.role === "agent" ? requestOf(entry) : null;
  const nudged = request && OPERATORS.has(request.origin);
  const interrupted = entry.interrupted || (request && ["cancelled", "incomplete"].includes(request.status));
  const classes = ["entry", `role-${entry.role}`];
  if (entry.oob) classes.push("oob");
  if (nudged) classes.push("nudged");
  if (interrupted) classes.push("interrupted");
  if (entry.done === false && !over) classes.push("streaming");
  // Streaming since before this page watched: its first words were not seen here.
  if (entry.partial && !entry.done) classes.push("partial");
  const marks = [];
  if (entry.oob) marks.push("operators only");
  if (nudged) marks.push(`nudged by ${request.requested_by || "an operator"}`);
  return el("li", { class: classes.join(" "), "data-entry": entry.id },
    el("span", { class: "who", text: [who, ...marks].join(" · ") }),
    el("p", { text: entry.text || "" }),
    interrupted ? el("span", { class: "badge status-cancelled mark", text: "interrupted" }) : null);
}

// A request's status can change how its turn is marked (nudged, interrupted).
function remarkEntries(request) {
  if (!request.response_id) return;
  for (const [id, node] of entries) {
    if (node.classList.contains("role-agent") && entryData.get(id)?.response_id === request.response_id) {
      setEntry({ ...entryData.get(id), text: node.querySelector("p").textContent });
    }
  }
}

function setEntry(entry) {
  entryData.set(entry.id, { ...entryData.get(entry.id), ...entry });
  const fresh = entryNode(entryData.get(entry.id));
  const old = entries.get(entry.id);
  entries.set(entry.id, fresh);
  if (old) old.replaceWith(fresh);
  else transcript.append(fresh);
}

// `quiet` for the snapshot: turns said before the page watched are no news to read out.
function applyTranscript(changes, quiet = false) {
  const stick = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 40;
  for (const change of changes) {
    if (change.append !== undefined) {
      const node = entries.get(change.id);
      if (node) node.querySelector("p").textContent += change.append;
      else setEntry({ ...change, text: change.append, done: false });
    } else {
      setEntry(change);
      sayTurn(entryData.get(change.id), quiet);
    }
  }
  if (stick) transcript.scrollTop = transcript.scrollHeight;
}

// ---------------------------------------------------------------- said to a screen reader
// Neither the transcript nor the requests table is a live region: each delta, each row
// redrawn would be read out. Two hidden regions say what is news instead: a turn once it is
// whole (the last few kept, as a log), and the latest change of an operator's request.

const turnsSaid = document.querySelector("[data-announce-turns]");
const requestSaid = document.querySelector("[data-announce-requests]");
const said = new Map(); // entry id → the text read out for it
const TURN_WORDS = { user: "Caller", agent: "Agent", system: "Note" };
const REQUEST_WORDS = { in_progress: "started", completed: "completed", cancelled: "cancelled", incomplete: "cut short", failed: "failed" };

function sayTurn(entry, quiet) {
  const who = TURN_WORDS[entry.role];
  const text = entry.text?.trim();
  // A caller's spoken turn is said once its words are known (its transcription comes later).
  if (!who || !entry.done || !text || text === transcript.dataset.untranscribed) return;
  if (said.get(entry.id) === text) return;
  said.set(entry.id, text);
  if (quiet) return;
  turnsSaid.append(el("p", { text: `${who}${entry.oob ? " (operators only)" : ""}: ${text}` }));
  while (turnsSaid.children.length > 5) turnsSaid.firstElementChild.remove();
}

// An operator's request starting and ending; a caller's, once this page cancelled it.
function sayRequest(request) {
  const words = REQUEST_WORDS[request.status];
  if (!words || !(OPERATORS.has(request.origin) || cancelledHere.has(request.id))) return;
  const whose = OPERATORS.has(request.origin) ? `${request.requested_by || "An operator"}’s request` : `The ${request.origin}’s request`;
  const what = request.instructions ? ` “${truncate(request.instructions, 60)}”` : "";
  requestSaid.textContent = `${whose}${what}: ${words}.`;
}

// ---------------------------------------------------------------- toasts, posts

// Toasts float in a corner (console.css), newest first, three at most: they never move the
// page. They start at the bottom edge; if that would cover a control, they go to the top.
// Each has a close button. One leaves by itself after TOAST_MS, counted only while neither the
// pointer nor the focus is on it (WCAG 2.2.1); an error stays until it is closed.
const TOAST_MS = 8000;

function toast(text, kind = "info") {
  const close = el("button", { type: "button", class: "toast-close", "aria-label": "Dismiss", title: "Dismiss", text: "×" });
  const note = el("div", { class: `toast ${kind}` }, el("p", { text }), close);
  let left = TOAST_MS, since = 0, timer = null, pointer = false;
  const held = () => pointer || note.contains(document.activeElement);
  const pause = () => {
    if (timer === null) return;
    clearTimeout(timer);
    timer = null;
    left -= Date.now() - since;
  };
  const resume = () => {
    if (kind === "bad" || timer !== null || held() || !note.isConnected) return;
    since = Date.now();
    timer = setTimeout(() => dismiss(note), Math.max(left, 0));
  };
  note.addEventListener("pointerenter", () => { pointer = true; pause(); });
  note.addEventListener("pointerleave", () => { pointer = false; resume(); });
  note.addEventListener("focusin", pause);
  // After the focus has settled elsewhere (a focusout's target is still focused).
  note.addEventListener("focusout", () => setTimeout(resume));
  close.addEventListener("click", () => dismiss(note));
  note.stop = pause;
  toasts.prepend(note);
  // The oldest goes first, an error after the others: it waits for its reader.
  while (toasts.children.length > 3) {
    const toasted = [...toasts.children].reverse();
    dismiss(toasted.find((n) => !n.classList.contains("bad")) ?? toasted[0]);
  }
  placeToasts();
  resume();
}

// A toast closed (or timed out) while the focus was in it hands the focus to the next toast's
// close button, or to the page's main region: never to the top of the page.
function dismiss(note) {
  if (!note.isConnected) return;
  const hadFocus = note.contains(document.activeElement);
  note.stop();
  note.remove();
  placeToasts();
  if (!hadFocus) return;
  const next = toasts.querySelector(".toast-close");
  if (next) next.focus();
  else {
    main.tabIndex = -1;
    main.focus({ preventScroll: true });
  }
}

const CONTROLS = "button, input, select, textarea, summary, a[href], audio";

function coversAControl() {
  const region = toasts.getBoundingClientRect();
  return [...document.querySelectorAll(CONTROLS)].some((control) => {
    if (toasts.contains(control)) return false;
    const box = control.getBoundingClientRect();
    return box.width > 0 && box.height > 0 && box.left < region.right && box.right > region.left
      && box.top < region.bottom && box.bottom > region.top;
  });
}

function placeToasts() {
  if (!toasts.children.length) return;
  toasts.dataset.edge = "bottom";
  if (!coversAControl()) return;
  toasts.dataset.edge = "top";
  if (coversAControl()) toasts.dataset.edge = "bottom";
}

let placing = false;
for (const type of ["scroll", "resize"]) {
  addEventListener(type, () => {
    if (placing || !toasts.children.length) return;
    placing = true;
    requestAnimationFrame(() => {
      placing = false;
      placeToasts();
    });
  }, { passive: true });
}

// What the form just did, beside Send (where the operator is looking), in place of the hint.
let sendStatusTimer;
function sendStatus(text, kind) {
  const status = form.querySelector("[data-send-status]");
  const hint = form.querySelector("[data-send-hint]");
  status.textContent = text;
  status.title = text;
  status.className = `send-status small ${kind}`;
  status.hidden = false;
  hint.hidden = true;
  clearTimeout(sendStatusTimer);
  sendStatusTimer = setTimeout(() => {
    status.hidden = true;
    hint.hidden = false;
  }, 8000);
}

async function post(url, body) {
  let response;
  try {
    response = await fetch(url, { method: "POST", body, headers: { Accept: "application/json" }, credentials: "same-origin" });
  } catch {
    return { ok: false, errors: { form: "The server could not be reached: try again." } };
  }
  try {
    return await response.json();
  } catch {
    return { ok: false, errors: { form: `The server answered ${response.status}.` } };
  }
}

// ---------------------------------------------------------------- the nudge form
// Field names are the server's (a Django form and formset): `instructions`, …, and metadata
// rows `metadata-<row>-key` / `metadata-<row>-value` counted by `metadata-TOTAL_FORMS`. Errors
// come back named the same way, so each lands beside its field.

const rowsBox = form?.querySelector("[data-metadata-rows]");
const addButton = form?.querySelector("[data-add-row]");

function rowNodes() {
  return [...rowsBox.querySelectorAll("[data-metadata-row]")];
}

function showErrors(errors) {
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = errors[slot.dataset.errorFor] || "";
  for (const input of form.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  for (const name of Object.keys(errors)) {
    const field = form.elements.namedItem(name);
    const inputs = field instanceof RadioNodeList ? [...field] : field ? [field] : [];
    for (const input of inputs) input.setAttribute("aria-invalid", "true");
  }
}

// A refused form: focus goes to the first field marked invalid, or to the first error said
// without a field (the form's own, the metadata's), so keyboard and screen-reader users land on it.
// Sent from that very field (Ctrl+Enter), the focus does not move and nothing would be read out:
// the status beside Send says the error instead (said once: the focus said nothing).
function focusFirstError() {
  const first = form.querySelector("[aria-invalid=true], [data-error-for]:not(:empty)");
  if (!first) return;
  if (first.matches("[data-error-for]")) first.tabIndex = -1;
  const stayed = document.activeElement === first;
  first.focus();
  const error = form.querySelector("[data-error-for]:not(:empty)");
  if (stayed && error) sendStatus(`Not sent: ${error.textContent}`, "bad");
}

// Characters as the server counts them (code points, not UTF-16 units).
const length = (text) => [...text].length;

function checkForm() {
  const maxKey = +rowsBox.dataset.maxKey, maxValue = +rowsBox.dataset.maxValue, maxRows = +rowsBox.dataset.maxRows;
  const errors = {};
  const seen = new Set();
  let used = 0;
  rowNodes().forEach((row, index) => {
    const [keyInput, valueInput] = row.querySelectorAll("input");
    const key = keyInput.value.trim(), value = valueInput.value.trim();
    if (!key && !value) return;
    used += 1;
    const name = `metadata-${index}`;
    if (!key) errors[`${name}-key`] = "A value needs a key.";
    else if (length(key) > maxKey) errors[`${name}-key`] = `${length(key)} characters; a key has at most ${maxKey}.`;
    else if (key === "oc_request") errors[`${name}-key`] = "'oc_request' is reserved by the relay.";
    else if (seen.has(key)) errors[`${name}-key`] = "This key is already used above.";
    seen.add(key);
    if (length(value) > maxValue) errors[`${name}-value`] = `${length(value)} characters; a value has at most ${maxValue}.`;
  });
  if (used > maxRows) errors.metadata = `At most ${maxRows} metadata rows; remove ${used - maxRows}.`;
  const instructions = length(form.instructions.value.trim()), maxInstructions = +form.instructions.dataset.maxChars;
  if (instructions > maxInstructions) errors.instructions = `${instructions} characters; at most ${maxInstructions} are allowed.`;
  if (form.as_note.checked && !form.instructions.value.trim()) errors.instructions = "Write the note's text.";
  if (form.as_note.checked && used) errors.metadata = "A note carries no metadata: clear the rows, or untick the note.";
  if (form.as_note.checked && form.conversation.checked) errors.conversation = "A note goes into the conversation: untick out of band.";
  return errors;
}

function renumberRows() {
  const rows = rowNodes();
  rows.forEach((row, index) => {
    const inputs = row.querySelectorAll("input");
    const labels = row.querySelectorAll("label");
    const slots = row.querySelectorAll("[data-error-for]");
    ["key", "value"].forEach((part, i) => {
      const name = `metadata-${index}-${part}`;
      inputs[i].name = name;
      inputs[i].id = name;
      inputs[i].setAttribute("aria-describedby", `err-${name}`);
      labels[i].htmlFor = name;
      labels[i].textContent = `${part === "key" ? "Key" : "Value"} of row ${index + 1}`;
      slots[i].dataset.errorFor = name;
      slots[i].id = `err-${name}`;
    });
    row.querySelector("[data-remove-row]").setAttribute("aria-label", `Remove row ${index + 1}`);
  });
  form.elements.namedItem("metadata-TOTAL_FORMS").value = rows.length;
  addButton.disabled = over || rows.length >= +rowsBox.dataset.maxRows;
  form.querySelector("[data-row-limit]").hidden = rows.length < +rowsBox.dataset.maxRows;
}

function clearRow(row) {
  for (const input of row.querySelectorAll("input")) {
    input.value = "";
    input.removeAttribute("aria-invalid");
  }
  for (const slot of row.querySelectorAll("[data-error-for]")) slot.textContent = "";
}

function addRow() {
  if (rowNodes().length >= +rowsBox.dataset.maxRows) return;
  const row = rowNodes()[0].cloneNode(true);
  clearRow(row);
  rowsBox.append(row);
  renumberRows();
  row.querySelector("input").focus();
}

function setUpForm() {
  if (!form) return;
  for (const button of form.querySelectorAll("[data-remove-row]")) button.hidden = false;
  // The "Remove" checkboxes are for a page without a script: the × buttons do it here.
  for (const check of form.querySelectorAll("[data-remove-check]")) check.remove();
  addButton.addEventListener("click", (event) => {
    event.preventDefault(); // without JavaScript it posts, and the page comes back with one more row
    addRow();
  });
  rowsBox.addEventListener("click", (event) => {
    if (!event.target.matches("[data-remove-row]")) return;
    const row = event.target.closest("[data-metadata-row]");
    const rows = rowNodes();
    if (rows.length === 1) {
      clearRow(row);
      renumberRows();
      return;
    }
    // The button goes with its row: the focus goes to the row that takes its place (or the one
    // before, for the last), not to the top of the page.
    const index = rows.indexOf(row);
    row.remove();
    renumberRows();
    const next = rowNodes()[Math.min(index, rows.length - 2)];
    next.querySelector("input").focus();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const errors = checkForm();
    showErrors(errors);
    if (Object.keys(errors).length) {
      focusFirstError();
      return;
    }
    const button = form.querySelector("[data-send]");
    button.disabled = true;
    try {
      const answer = await post(form.action, new FormData(form));
      if (!answer.ok) {
        showErrors(answer.errors || { form: "The request was refused." });
        focusFirstError();
        return;
      }
      if (answer.request && !requests.has(answer.request.id)) {
        // Answered after the session's end reached the page: the end failed it meanwhile.
        const request = endedWhile(answer.request);
        requests.set(request.id, request);
        renderRequest(request);
        drawChart();
      }
      sendStatus(answer.note ? "Note added to the conversation." : "Response requested.", "ok");
      form.instructions.value = "";
      form.instructions_mode.value = "append"; // everything back as a fresh form has it
      form.as_note.checked = false;
      form.conversation.checked = false;
      rowNodes().forEach((row, index) => (index ? row.remove() : clearRow(row)));
      renumberRows();
      showErrors({});
      // Send, disabled while it posted, lost the focus: it goes to the form, ready for the next.
      if (document.activeElement === document.body) form.instructions.focus();
    } finally {
      button.disabled = over;
    }
  });
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit(form.querySelector("[data-send]"));
    }
  });
  renumberRows();
  const interrupt = document.querySelector("[data-interrupt-form]");
  interrupt.addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = await post(interrupt.action, new FormData(interrupt));
    if (!answer.ok) toast(answer.errors?.form || "Could not interrupt.", "bad");
    else toast(answer.response_id ? "Asked the active response to stop." : "No response was active.", "info");
  });
}

// Escape closes an open confirmation (cancel, hang up, transfer) and goes back to its summary.
document.addEventListener("keydown", (event) => {
  const open = event.key === "Escape" && event.target.closest?.("details.confirm[open]");
  if (!open) return;
  open.open = false;
  open.querySelector("summary").focus();
});

// ---------------------------------------------------------------- the label

function setUpLabel() {
  const labelForm = document.querySelector("[data-label-form]");
  if (!labelForm) return;
  labelForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = await post(labelForm.action, new FormData(labelForm));
    const error = labelForm.querySelector("[data-error-for=label]");
    error.textContent = answer.ok ? "" : answer.errors?.label || answer.errors?.form || "The label was refused.";
    // A refusal marks the field and puts the focus on it, which reads its error out; sent from
    // the field itself (Enter), the focus does not move, and the form's status says it.
    const said = labelForm.querySelector("[data-label-said]");
    said.textContent = "";
    if (answer.ok) labelForm.label.removeAttribute("aria-invalid");
    else {
      labelForm.label.setAttribute("aria-invalid", "true");
      const stayed = document.activeElement === labelForm.label;
      if (stayed) said.textContent = `Label not saved: ${error.textContent}`;
      labelForm.label.focus();
      return;
    }
    showLabel(answer.label);
    labelForm.label.value = answer.label;
    toast(answer.label ? `Labelled “${answer.label}”.` : "Label cleared.", "ok");
  });
}

// The label as the page shows it (the heading, the tab's title, the form), set here or pushed
// by the server when another operator or a script sets it. What is being typed in the form is
// left alone: only a field that still shows the old label follows.
function showLabel(label) {
  const shown = document.querySelector("[data-label-shown]");
  const before = shown.querySelector(".label-text")?.textContent ?? "";
  if (label === before) return;
  shown.replaceChildren(label ? el("span", { class: "label-text", text: label }) : el("span", { class: "muted", text: "No label" }));
  document.title = `${label || sessionId} · Operator Console`;
  const field = document.querySelector("[data-label-form] [name=label]");
  if (field && field.value.trim() === before) field.value = label;
}

// ---------------------------------------------------------------- the end

// As `LiveSession.end_summary` and `.end_code_summary` word them.
const END_WORDS = JSON.parse(document.getElementById("end-words").textContent);

function endSummary(message) {
  if (!message.reason) return "no reason was recorded";
  const words = END_WORDS[message.reason] || message.reason;
  return message.detail ? `${words}: ${message.detail}` : `${words}.`;
}

function endCode(message) {
  if (!message.reason) return "";
  const code = message.code === undefined || message.code === null ? "" : ` · ${message.code}`;
  return `${message.reason}${code}`;
}

// The tokens used so far and their cost, as parts/usage.html shows them.
function showUsage({ usage, cost_usd: cost }) {
  const count = (n) => (Number.isInteger(n) ? n : 0).toLocaleString("en-US");
  const price = cost === null || cost === undefined ? `no price for ${main.dataset.model}` : money(cost);
  const shown = document.querySelector("[data-usage-text]");
  shown.textContent = usage?.total_tokens ? `${count(usage.total_tokens)} tokens · ${price}` : "no tokens used yet";
  if (usage?.total_tokens) shown.title = `${count(usage.input_tokens)} input, ${count(usage.output_tokens)} output`;
}

// The end fails every request still waiting (apps/sessions/records.py: `session_ended`; a
// swept session's are `session_lost`). One whose change never reached the page (its POST
// answered after the end, the actor gone) would otherwise say `queued` here for ever.
let endedBy = null;

function endedWhile(request) {
  if (!endedBy || TERMINAL.has(request.status)) return request;
  const code = endedBy.reason === "session_lost" ? "session_lost" : "session_ended";
  return { ...request, status: "failed", error: { code, message: endSummary(endedBy) } };
}

let live = null;
// The page's socket, in words apart from the session's own status badge ("● live"); `paused`:
// the server cannot reach the session for a while (its channel layer is down); `waiting`: the
// socket is open, the session's snapshot not come. A session whose process died says so until
// a sweep ends it (OC_SESSION_STALE_AFTER), rather than "Connected" to a session gone.
const SOCKET_WORDS = {
  live: "Connected", paused: "Updates paused: the server is reconnecting…", waiting: "Waiting for the session…",
};

function ended(message) {
  if (over) return;
  over = true;
  endedBy = message;
  for (const request of requests.values()) requests.set(request.id, endedWhile(request));
  // The operator on the form (typing, say) follows it to the note that says why it went.
  const wasSteering = document.querySelector(".steer-card")?.contains(document.activeElement);
  live?.close();
  showState(document.querySelector("[data-live-status]"), "over");
  main.dataset.status = message.status;
  const badge = document.querySelector("[data-session-status]");
  badge.textContent = message.status;
  badge.className = `badge status-${message.status}`;
  const note = document.querySelector("[data-ended-note]");
  note.querySelector("[data-ended-status]").textContent = message.status;
  note.querySelector("[data-end-reason]").textContent = endSummary(message);
  note.querySelector("[data-end-code]").textContent = endCode(message);
  note.hidden = false;
  document.querySelector("[data-steer-closed]")?.removeAttribute("hidden");
  const callControl = document.querySelector("[data-call-control]");
  if (callControl) callControl.hidden = true; // hang-up and transfer: the call is over
  for (const control of document.querySelectorAll("[data-nudge-form] :is(button, input, textarea), [data-interrupt-form] button")) {
    control.disabled = true;
  }
  for (const entry of transcript.querySelectorAll(".streaming")) entry.classList.remove("streaming");
  // A caller's turn still waiting for its transcription will not get it now.
  for (const text of transcript.querySelectorAll(".role-user > p")) {
    if (text.textContent === transcript.dataset.untranscribed) text.textContent = transcript.dataset.neverTranscribed;
  }
  presence.textContent = "—";
  // As the page reloaded would be: the end time in the header, no listening, no steering (the
  // transcript and the history take the width).
  const endedAt = document.querySelector("[data-ended-at]");
  endedAt.querySelector("time").setAttribute("datetime", new Date().toISOString());
  endedAt.hidden = false;
  refreshClocks(endedAt);
  document.dispatchEvent(new CustomEvent("oc:session-ended")); // listen.js stops and goes
  // What was typed and never sent is not lost with the form: the note keeps it, to copy.
  const unsent = form?.instructions.value.trim();
  if (unsent) note.append(el("p", { class: "unsent", "data-unsent": "" }, "Not sent (the session ended first): ", el("q", { text: unsent })));
  document.querySelector(".steer-card")?.remove();
  if (wasSteering) {
    note.tabIndex = -1;
    note.focus();
  }
  document.querySelector(".columns.three")?.classList.replace("three", "two");
  tools.ended();
  renderAllRequests(); // no cancel buttons any more
  toast(`The session is over. ${endSummary(message)}`, "info");
}

// ---------------------------------------------------------------- live

// What works only with a script (live status, listening, the chart) is hidden until one runs.
for (const node of document.querySelectorAll("[data-script-only]")) node.hidden = false;
setUpForm();
setUpLabel();
const tools = setUpTools({ toast });
renderAllRequests();
refreshClocks();
tickAges();
if (!over) live = connectLive({
  subscribe: { type: "watch.session", session_id: sessionId },
  onState: (state) => showState(document.querySelector("[data-live-status]"), state === "live" ? "waiting" : state, SOCKET_WORDS),
  onMessage(message) {
    if (over) return; // the socket is closing: nothing after the end changes the page
    switch (message.type) {
      case "paused": showState(document.querySelector("[data-live-status]"), "paused", SOCKET_WORDS); break;
      case "snapshot":
        showState(document.querySelector("[data-live-status]"), "live", SOCKET_WORDS);
        entries.clear();
        transcript.replaceChildren();
        applyTranscript(message.transcript, true);
        presence.textContent = message.watchers.join(", ") || "—";
        showUsage(message);
        for (const request of message.requests) applyRequest(request, true);
        tools.snapshot(message);
        break;
      case "usage": showUsage(message); break;
      case "transcript": applyTranscript(message.entries); break;
      case "approval": tools.approval(message.approval); break;
      case "rate_limits": tools.rateLimits(message); break;
      case "request": applyRequest(message); break;
      case "label": showLabel(message.label); break;
      case "presence": presence.textContent = message.watchers.join(", ") || "—"; break;
      case "ended": ended(message); break;
      default: break;
    }
    refreshAges(main);
  },
});
