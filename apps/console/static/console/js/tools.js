// Tools on the session page: tool calls in the transcript, approval requests with Approve /
// Deny (live for every operator watching), and the latest rate limits with a warning when low.
// The server renders the first state (parts/tools.html); the session's socket brings changes:
// `snapshot` (`approvals`, `rate_limits`), `approval` (one request, as made or decided) and
// `rate_limits`. Approvals arrive in two shapes, the REST hook's (`id`, ISO times) and the
// relay's (`approval_id`, seconds): `normal()` makes them one.
import { clock, el, refreshClocks } from "./dom.js";

const card = document.querySelector("[data-approvals]");
const list = card?.querySelector("[data-approval-list]");
const rateCard = document.querySelector("[data-rate-limits]");
const canDecide = card?.dataset.canDecide === "true";
const timeout = Number(card?.dataset.timeout || 0);
const lowShare = Number(rateCard?.dataset.lowShare || 10) / 100;
const csrf = document.querySelector("input[name=csrfmiddlewaretoken]")?.value;

const iso = (value) => (typeof value === "number" ? new Date(value * 1000).toISOString() : value || null);

function normal(approval) {
  return {
    ...approval,
    id: approval.id ?? approval.approval_id,
    created_at: iso(approval.created_at),
    decided_at: iso(approval.decided_at),
  };
}

// ---------------------------------------------------------------- tool calls in the transcript

function duration(ms) {
  if (ms === null || ms === undefined) return null;
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// A transcript entry of role `tool`: its name, arguments, output (or error) and duration.
export function toolEntry(entry) {
  const tool = entry.tool || {};
  const name = tool.server_label ? `${tool.server_label}.${tool.name}` : tool.name;
  const took = duration(tool.duration_ms);
  const who = ["tool", tool.kind === "mcp" ? "mcp" : "function", name, took].filter(Boolean).join(" · ");
  let result;
  if (tool.error) result = el("p", { class: "tool-error", text: `Error: ${tool.error}` });
  else if (tool.output === null || tool.output === undefined) result = el("p", { class: "muted", text: entry.done ? "No output." : "Waiting for its output…" });
  else result = el("p", { class: "tool-output", text: tool.output });
  return el("li", { class: `entry role-tool${entry.done ? "" : " running"}`, "data-entry": entry.id },
    el("span", { class: "who", text: who }),
    el("code", { class: "tool-arguments", text: tool.arguments || "{}" }),
    result);
}

// ---------------------------------------------------------------- approvals

const approvals = new Map();
let over = false;
let toast = () => {};

function decidedLine(approval) {
  const when = el("time", { dateTime: approval.decided_at, "data-clock": "", text: clock(approval.decided_at) });
  const who = approval.status === "expired"
    ? ["Denied automatically"]
    : [`${approval.status[0].toUpperCase()}${approval.status.slice(1)} by `, el("strong", { text: approval.decided_by || "—" })];
  return el("p", { class: "decided" }, ...who, " at ", when, approval.reason ? `: “${approval.reason}”` : "");
}

function decideUrl(id) {
  return card.dataset.decideUrl.replace("APPROVAL_ID", encodeURIComponent(id));
}

// Approve and Deny are named with the tool ("Approve crm · lookup"), as the server's are.
function namedFor(decision, approval) {
  const id = `${decision}-${approval.id}`;
  return { id, "aria-labelledby": `${id} tool-${approval.id}` };
}

function decideForm(approval) {
  const reasonId = `reason-${approval.id}`;
  const form = el("form", { method: "post", action: decideUrl(approval.id), class: "approval-form", "data-approval-form": "" },
    el("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrf }),
    el("label", { htmlFor: reasonId }, "Reason ", el("span", { class: "muted", text: "(optional, sent with the decision)" })),
    el("input", { type: "text", id: reasonId, name: "reason", maxLength: 1000, autocomplete: "off" }),
    el("div", { class: "approval-actions" },
      el("button", { type: "submit", name: "decision", value: "approve", class: "primary", text: "Approve",
        ...namedFor("approve", approval) }),
      el("button", { type: "submit", name: "decision", value: "deny", class: "danger", text: "Deny",
        ...namedFor("deny", approval) }),
      el("span", { class: "muted small", "data-countdown": "" })));
  return form;
}

// The tool's arguments as the model wrote them (a JSON string), indented when they parse.
function readable(args) {
  try {
    return JSON.stringify(JSON.parse(args || "{}"), null, 2);
  } catch {
    return args;
  }
}

function approvalNode(approval) {
  const pending = approval.status === "pending";
  const args = el("pre", { class: "arguments", text: readable(approval.arguments) });
  let body;
  if (!pending) body = [decidedLine(approval), el("details", { class: "arguments-fold" }, el("summary", { text: "Arguments" }), args)];
  else if (canDecide && !over) body = [args, decideForm(approval)];
  else body = [args, el("p", { class: "muted small", text: over ? "The session is over." : "Waiting for an operator who may steer this session." })];
  return el("li", { class: "approval", "data-approval": approval.id, "data-status": approval.status },
    el("div", { class: "approval-head" },
      el("span", { class: "tool-name", id: `tool-${approval.id}` },
        approval.server_label ? el("span", { class: "muted", text: `${approval.server_label} · ` }) : null, approval.name),
      el("span", { class: `badge status-${approval.status}`, text: approval.status })),
    ...body);
}

function showCount() {
  const pending = [...approvals.values()].filter((a) => a.status === "pending").length;
  card.querySelector("[data-approvals-count]").textContent = pending ? `${pending} waiting for a decision` : "";
  card.classList.toggle("waiting", pending > 0);
  card.hidden = approvals.size === 0;
}

function render(approval) {
  const old = list.querySelector(`[data-approval="${CSS.escape(approval.id)}"]`);
  // A pending card keeps its form (and what the operator is typing) until it is decided.
  if (old && old.dataset.status === approval.status && approval.status === "pending") return;
  const fresh = approvalNode(approval);
  if (old) old.replaceWith(fresh);
  else list.append(fresh);
  refreshClocks(fresh);
}

export function applyApproval(raw, { quiet = false } = {}) {
  const approval = normal(raw);
  const before = approvals.get(approval.id);
  approvals.set(approval.id, approval);
  render(approval);
  showCount();
  if (quiet) return;
  if (!before && approval.status === "pending") {
    const ask = canDecide ? "approve or deny it under “Tool approvals”" : "an operator who may steer decides";
    toast(`The agent asks to run ${approval.name}: ${ask}.`, "info");
  }
  else if (before?.status === "pending" && approval.status !== "pending") {
    const who = approval.status === "expired" ? "nobody decided in time" : `by ${approval.decided_by}`;
    toast(`${approval.name}: ${approval.status} (${who}).`, approval.status === "approved" ? "ok" : "info");
  }
}

// Seconds left before a pending request is denied for want of a decision.
function tickCountdowns() {
  if (!timeout) return;
  for (const approval of approvals.values()) {
    if (approval.status !== "pending") continue;
    const slot = list.querySelector(`[data-approval="${CSS.escape(approval.id)}"] [data-countdown]`);
    if (!slot || !approval.created_at) continue;
    const left = Math.max(0, Math.round(Date.parse(approval.created_at) / 1000 + timeout - Date.now() / 1000));
    slot.textContent = `Denied automatically in ${left} s`;
  }
}

async function submitDecision(event) {
  const form = event.target.closest("[data-approval-form]");
  if (!form) return;
  event.preventDefault();
  const body = new FormData(form);
  if (event.submitter) body.set(event.submitter.name, event.submitter.value);
  const buttons = form.querySelectorAll("button");
  for (const button of buttons) button.disabled = true;
  let answer;
  try {
    const response = await fetch(form.action, { method: "POST", body, headers: { Accept: "application/json" }, credentials: "same-origin" });
    answer = await response.json().catch(() => ({ ok: false, errors: { form: `The server answered ${response.status}.` } }));
  } catch {
    answer = { ok: false, errors: { form: "The decision could not be sent; try again." } };
  }
  if (answer.approval) applyApproval(answer.approval, { quiet: true });
  if (!answer.ok) {
    toast(answer.errors?.form || "The decision was refused.", "bad");
    for (const button of buttons) button.disabled = false;
  }
}

// ---------------------------------------------------------------- rate limits

export function applyRateLimits(message) {
  if (!rateCard || !message || !Array.isArray(message.rate_limits)) return;
  const low = [];
  const rows = message.rate_limits.map((limit) => {
    const share = limit.limit > 0 ? limit.remaining / limit.limit : null;
    const isLow = share !== null && share < lowShare;
    if (isLow) low.push(`${limit.name} (${Math.round(share * 100)} % left)`);
    const resets = typeof limit.reset_seconds === "number" && typeof message.at === "number"
      ? new Date((message.at + limit.reset_seconds) * 1000).toISOString() : null;
    return el("div", { class: `rate${isLow ? " low" : ""}` },
      el("dt", { text: limit.name }),
      el("dd", {},
        el("meter", { min: 0, max: limit.limit, value: limit.remaining, low: limit.limit * lowShare + 1e-9, optimum: limit.limit, "aria-label": `${limit.name} left` }),
        ` ${limit.remaining} of ${limit.limit} left`,
        resets ? [" · resets ", el("time", { dateTime: resets, "data-clock": "", text: clock(resets) })] : null));
  });
  rateCard.querySelector("[data-rate-list]").replaceChildren(...rows);
  const warning = rateCard.querySelector("[data-rate-warning]");
  warning.textContent = low.length ? `Running low: ${low.join(", ")}, under ${Math.round(lowShare * 100)} % of the limit.` : "";
  warning.hidden = !low.length;
  rateCard.hidden = rows.length === 0;
  refreshClocks(rateCard);
}

// ---------------------------------------------------------------- set up

export function setUpTools(options) {
  toast = options.toast;
  if (!card) return { snapshot() {}, approval() {}, rateLimits() {}, ended() {} };
  for (const node of list.querySelectorAll("[data-approval]")) {
    // When it was made: its countdown runs before the socket's snapshot (or if none comes).
    const { approval: id, status, created } = node.dataset;
    approvals.set(id, { id, status, created_at: created || null });
  }
  list.addEventListener("submit", submitDecision);
  setInterval(tickCountdowns, 1000);
  showCount();
  return {
    snapshot(message) {
      for (const approval of message.approvals || []) applyApproval(approval, { quiet: true });
      if (message.rate_limits) applyRateLimits(message.rate_limits);
      tickCountdowns();
    },
    approval: (approval) => {
      applyApproval(approval);
      tickCountdowns();
    },
    rateLimits: applyRateLimits,
    ended() {
      over = true;
      for (const control of list.querySelectorAll("[data-approval-form] :is(button, input)")) control.disabled = true;
    },
  };
}
