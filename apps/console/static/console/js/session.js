// /console/sessions/{id}/: live transcript, queue and history, presence, the nudge form.
import { el, millis, refreshAges, tickAges } from "./dom.js";
import { connectLive, showState } from "./live.js";

const main = document.querySelector("main");
const sessionId = main.dataset.sessionId;
const me = main.dataset.username;
const canSteer = main.dataset.canSteer === "true";
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
for (const request of JSON.parse(document.getElementById("requests-data").textContent)) {
  requests.set(request.id, request);
}

function isoAt(seconds) {
  return new Date(seconds * 1000).toISOString();
}

function cancelButton(request) {
  if (!canSteer || over || request.status !== "queued") return null;
  const button = el("button", { type: "submit", class: "link", text: "Cancel" });
  const cancel = el("form", { method: "post", action: `/console/requests/${encodeURIComponent(request.id)}/cancel` },
    el("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrf }), button);
  cancel.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    const answer = await post(cancel.action, new FormData(cancel));
    if (!answer.ok) toast(answer.errors?.form || "Could not cancel.", "bad");
    button.disabled = false;
  });
  return cancel;
}

function requestRow(request) {
  const latency = millis(request.created_at, request.started_at);
  const metadata = request.metadata && Object.keys(request.metadata).length
    ? el("small", {}, Object.entries(request.metadata).map(([k, v]) => `${k}=${v} `)) : null;
  const reason = request.error?.code || request.error_code;
  return el("tr", { "data-request": request.id, "data-status": request.status },
    el("td", {}, el("span", { class: "origin", text: request.origin }), ` ${request.requested_by || ""}`,
      el("br"), el("code", { class: "rid", text: `${request.id.slice(0, 12)}…` })),
    el("td", {}, el("span", { class: `badge status-${request.status}`, text: request.status }),
      reason ? [el("br"), el("small", { class: "reason", text: reason })] : null),
    el("td", {}, request.conversation === "none" ? el("span", { class: "badge oob", text: "out of band" }) : null,
      request.instructions ? ` ${request.instructions.slice(0, 80)}` : "", metadata ? [el("br"), metadata] : null),
    el("td", { text: latency === null ? "" : `${latency} ms` }),
    el("td", {}, cancelButton(request)));
}

function renderRequest(request) {
  const fresh = requestRow(request);
  const old = requestsBody.querySelector(`tr[data-request="${CSS.escape(request.id)}"]`);
  if (old) old.replaceWith(fresh);
  else requestsBody.append(fresh);
}

function renderAllRequests() {
  requestsBody.replaceChildren(...[...requests.values()].map(requestRow));
  drawChart();
}

// A status change from the session's actor (ordered), or the answer to our own POST.
function applyRequest(message) {
  const known = requests.get(message.request_id);
  const request = known ?? { id: message.request_id, created_at: isoAt(message.at) };
  for (const key of ["origin", "requested_by", "instructions", "metadata", "conversation", "response_id"]) {
    if (message[key] !== undefined && message[key] !== null) request[key] = message[key];
  }
  request.status = message.status;
  if (message.status === "sent") request.sent_at = isoAt(message.at);
  if (message.status === "in_progress") request.started_at = isoAt(message.at);
  if (TERMINAL.has(message.status)) request.finished_at = isoAt(message.at);
  if (message.error_code) request.error = { code: message.error_code, message: message.error_message };
  requests.set(request.id, request);
  renderRequest(request);
  drawChart();
  if (!known && OPERATORS.has(request.origin) && request.requested_by !== me) {
    const what = request.instructions ? `: “${request.instructions.slice(0, 60)}”` : "";
    toast(`${request.requested_by || "Someone"} asked for a response${what}`, "info");
  }
}

// ---------------------------------------------------------------- chart

function drawChart() {
  const svg = document.querySelector("[data-latency-chart]");
  const points = [...requests.values()]
    .filter((r) => OPERATORS.has(r.origin) && r.started_at)
    .map((r) => millis(r.created_at, r.started_at));
  const caption = document.querySelector("[data-latency-caption]");
  if (!points.length) {
    svg.replaceChildren();
    caption.textContent = "Nudge → start latency: no nudge has started yet";
    return;
  }
  const top = Math.max(...points, 1);
  const step = points.length > 1 ? 300 / (points.length - 1) : 0;
  const coords = points.map((ms, i) => `${(i * step).toFixed(1)},${(58 - (ms / top) * 54).toFixed(1)}`);
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("points", points.length > 1 ? coords.join(" ") : `0,${coords[0].split(",")[1]} 300,${coords[0].split(",")[1]}`);
  line.setAttribute("class", "line");
  svg.replaceChildren(line);
  const sorted = [...points].sort((a, b) => a - b);
  caption.textContent = `Nudge → start latency over ${points.length} nudges: median ${sorted[Math.floor(sorted.length / 2)]} ms, max ${top} ms`;
}

// ---------------------------------------------------------------- transcript

const entries = new Map();

function entryNode(entry) {
  const who = entry.role === "agent" ? "agent" : entry.role === "system" ? "note" : "caller";
  return el("li", { class: `entry role-${entry.role}${entry.oob ? " oob" : ""}${entry.done === false ? " streaming" : ""}`, "data-entry": entry.id },
    el("span", { class: "who", text: entry.oob ? `${who} · operators only` : who }),
    el("p", { text: entry.text || "" }));
}

function setEntry(entry) {
  const fresh = entryNode(entry);
  const old = entries.get(entry.id);
  entries.set(entry.id, fresh);
  if (old) old.replaceWith(fresh);
  else transcript.append(fresh);
}

function applyTranscript(changes) {
  const stick = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 40;
  for (const change of changes) {
    if (change.append !== undefined) {
      const node = entries.get(change.id);
      if (node) node.querySelector("p").textContent += change.append;
      else setEntry({ ...change, text: change.append, done: false });
    } else {
      setEntry(change);
    }
  }
  if (stick) transcript.scrollTop = transcript.scrollHeight;
}

// ---------------------------------------------------------------- toasts, posts

function toast(text, kind = "info") {
  const note = el("p", { class: `toast ${kind}`, role: "status", text });
  toasts.append(note);
  setTimeout(() => note.remove(), 6000);
}

async function post(url, body) {
  const response = await fetch(url, { method: "POST", body, headers: { Accept: "application/json" }, credentials: "same-origin" });
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
  if (form.as_note.checked && !form.instructions.value.trim()) errors.instructions = "Write the note's text.";
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
  });
  form.elements.namedItem("metadata-TOTAL_FORMS").value = rows.length;
  addButton.disabled = over || rows.length >= +rowsBox.dataset.maxRows;
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
  addButton.addEventListener("click", (event) => {
    event.preventDefault(); // without JavaScript it posts, and the page comes back with one more row
    addRow();
  });
  rowsBox.addEventListener("click", (event) => {
    if (!event.target.matches("[data-remove-row]")) return;
    const row = event.target.closest("[data-metadata-row]");
    if (rowNodes().length > 1) row.remove();
    else clearRow(row);
    renumberRows();
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const errors = checkForm();
    showErrors(errors);
    if (Object.keys(errors).length) return;
    const button = form.querySelector("[data-send]");
    button.disabled = true;
    try {
      const answer = await post(form.action, new FormData(form));
      if (!answer.ok) {
        showErrors(answer.errors || { form: "The request was refused." });
        return;
      }
      if (answer.request && !requests.has(answer.request.id)) {
        requests.set(answer.request.id, answer.request);
        renderRequest(answer.request);
      }
      toast(answer.note ? "Note added to the conversation." : "Response requested.", "ok");
      form.instructions.value = "";
      form.as_note.checked = false;
      form.conversation.checked = false;
      rowNodes().forEach((row, index) => (index ? row.remove() : clearRow(row)));
      renumberRows();
      showErrors({});
    } finally {
      button.disabled = over;
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

// ---------------------------------------------------------------- the end

// As `LiveSession.end_summary` words it: `upstream_closed (1011): The upstream …`.
function endSummary(message) {
  if (!message.reason) return "no reason was recorded";
  const code = message.code === undefined || message.code === null ? "" : ` (${message.code})`;
  return `${message.reason}${code}${message.detail ? `: ${message.detail}` : ""}`;
}

let live = null;

function ended(message) {
  if (over) return;
  over = true;
  live?.close();
  showState(document.querySelector("[data-live-status]"), "over");
  main.dataset.status = message.status;
  const badge = document.querySelector("[data-session-status]");
  badge.textContent = message.status;
  badge.className = `badge status-${message.status}`;
  const note = document.querySelector("[data-ended-note]");
  note.querySelector("[data-ended-status]").textContent = message.status;
  note.querySelector("[data-end-reason]").textContent = endSummary(message);
  note.hidden = false;
  document.querySelector("[data-steer-closed]")?.removeAttribute("hidden");
  for (const control of document.querySelectorAll("[data-nudge-form] :is(button, input, textarea), [data-interrupt-form] button")) {
    control.disabled = true;
  }
  for (const entry of transcript.querySelectorAll(".streaming")) entry.classList.remove("streaming");
  presence.textContent = "—";
  renderAllRequests(); // no cancel buttons any more
  toast(`The session is over: ${endSummary(message)}.`, "info");
}

// ---------------------------------------------------------------- live

setUpForm();
renderAllRequests();
tickAges();
if (!over) live = connectLive({
  subscribe: { type: "watch.session", session_id: sessionId },
  onState: (state) => showState(document.querySelector("[data-live-status]"), state),
  onMessage(message) {
    if (over) return; // the socket is closing: nothing after the end changes the page
    switch (message.type) {
      case "snapshot":
        entries.clear();
        transcript.replaceChildren();
        applyTranscript(message.transcript);
        presence.textContent = message.watchers.join(", ") || "—";
        break;
      case "transcript": applyTranscript(message.entries); break;
      case "request": applyRequest(message); break;
      case "presence": presence.textContent = message.watchers.join(", ") || "—"; break;
      case "ended": ended(message); break;
      default: break;
    }
    refreshAges(main);
  },
});
