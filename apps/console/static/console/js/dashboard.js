// /console/: the live sessions, searched, filtered, sorted and paged on the server.
// The view lives in the URL (?q=…&state=…&sort=…&page=…): the filter form is a GET form and the
// headings are links, so it all works without JavaScript. Here the same parameters are sent
// over the socket, and the server sends this page's rows whenever they change.
import { el, money, refreshAges, tickAges } from "./dom.js";
import { connectLive, showState } from "./live.js";

const table = document.querySelector("[data-sessions]");
const body = table.querySelector("tbody");
const empty = document.querySelector("[data-empty]");
const filters = document.querySelector("[data-filters]");
const pager = document.querySelector("[data-pager]");
const figures = {
  live: document.querySelector('[data-figure="live"]'),
  nudges: document.querySelector('[data-figure="nudges"]'),
  latency: document.querySelector('[data-figure="latency"]'),
  cost: document.querySelector('[data-figure="cost"]'),
  costBox: document.querySelector('[data-figure-box="cost"]'),
};
const sortMenu = filters.querySelector("[data-sort-menu]"); // the phone's way to sort
const DEFAULT_SORT = "-started";
const DESCENDING_FIRST = new Set(["started", "requests", "cost", "last_activity", "watching"]);

let view = Object.fromEntries(new URLSearchParams(location.search));


// A view as its query string: the parameters that are not the defaults (as the server's
// `View.params()` has them).
function queryOf(parameters) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(parameters)) {
    if (value === "" || value === undefined || value === null) continue;
    if (key === "sort" && value === DEFAULT_SORT) continue;
    if (key === "page" && String(value) === "1") continue;
    params.set(key, value);
  }
  const text = params.toString();
  return text ? `?${text}` : "?";
}

function query(changes = {}) {
  return queryOf({ ...view, ...changes });
}

// Whether a message is of the view the page asked for last (its parameters, in any order).
function ofViewAsked(message) {
  const sorted = (text) => {
    const params = new URLSearchParams(text);
    params.sort();
    return params.toString();
  };
  return sorted(queryOf(message.view)) === sorted(query());
}

function row(session) {
  const state = [el("span", { class: `badge state-${session.state}`, text: session.state })];
  if (session.queued) state.push(" ", el("span", { class: "badge state-queued", text: `${session.queued} queued` }));
  const cell = (label, attrs, ...children) => el("td", { "data-label": label, ...attrs }, ...children);
  return el(
    "tr",
    { "data-session": session.id },
    cell("Session", {}, el("a", { href: `/console/sessions/${encodeURIComponent(session.id)}/`, text: session.id })),
    cell("Label", { class: "label-cell", text: session.label || "—" }),
    cell("State", {}, el("span", { class: "badges" }, state)),
    cell("Model", { text: session.model }),
    cell("Kind", { text: session.kind }),
    cell("Age", { "data-since": session.started_at }),
    cell("Connected by", { text: session.connected_by || "—" }),
    cell("Responses", { text: session.requests }),
    cell("Cost", { text: session.cost_usd === null || session.cost_usd === undefined ? "—" : money(session.cost_usd) }),
    cell("Last activity", { "data-since": session.last_activity }),
    cell("Watching", { text: session.watchers.length ? session.watchers.join(", ") : "—" }),
  );
}

// Rows are updated in place, not rebuilt: the row the operator is on (its link focused) stays
// while the sessions around it change, and goes with the focus when it moves.
function placeRows(fresh) {
  const old = new Map([...body.children].map((tr) => [tr.dataset.session, tr]));
  const rows = fresh.map((tr) => {
    const kept = old.get(tr.dataset.session);
    if (!kept) return tr;
    old.delete(tr.dataset.session);
    [...tr.children].forEach((cell, i) => {
      if (!cell.isEqualNode(kept.children[i])) kept.children[i].replaceWith(cell);
    });
    return kept;
  });
  for (const gone of old.values()) gone.remove();
  const focused = document.activeElement;
  rows.forEach((tr, i) => {
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] ?? null);
  });
  if (focused !== document.activeElement && body.contains(focused)) {
    focused.focus({ preventScroll: true }); // its row moved, and lost the focus on the way
  }
}

function headings() {
  const sort = view.sort || DEFAULT_SORT;
  sortMenu.value = sort;
  const key = sort.replace(/^-/, "");
  const descending = sort.startsWith("-");
  for (const link of table.querySelectorAll("[data-sort]")) {
    const column = link.dataset.sort;
    const current = column === key;
    const next = current ? (descending ? column : `-${column}`) : (DESCENDING_FIRST.has(column) ? `-${column}` : column);
    link.href = query({ sort: next, page: 1 });
    // Newest first is the smallest age first.
    const shown = descending !== (column === "started");
    link.parentElement.setAttribute("aria-sort", current ? (shown ? "descending" : "ascending") : "none");
  }
}

function show(message) {
  // The page asked for is past the last (sessions ended): the last is shown, and the link says so.
  const asked = String(message.view.page ?? 1);
  if (asked === String(view.page ?? 1) && asked !== String(message.page)) {
    change({ ...view, page: message.page });
  }
  placeRows(message.rows.map(row));
  figures.live.textContent = message.live;
  figures.nudges.textContent = message.stats.nudges_last_minute;
  const latency = message.stats.median_nudge_to_start_ms;
  figures.latency.textContent = latency === null || latency === undefined ? "—" : `${latency} ms`;
  figures.costBox.hidden = message.cost_usd === null || message.cost_usd === undefined;
  if (!figures.costBox.hidden) figures.cost.textContent = money(message.cost_usd);
  empty.hidden = message.rows.length > 0;
  if (!message.rows.length) {
    empty.replaceChildren(...(message.live
      ? ["No live session matches. ", el("a", { href: "?", text: "Show them all" }), "."]
      : ["No live sessions. Connect a Realtime client, or run ", el("code", { text: "python manage.py demo_callers --count 3" }), "."]));
  }
  const range = pager.querySelector("[data-range]");
  const shown = message.total
    ? `${message.first}–${message.last} of ${message.total}${message.total !== message.live ? ` matching (${message.live} live)` : ""}`
    : "";
  if (range.textContent !== shown) range.textContent = shown;
  // Said once, for the operator's own change (a page, a sort, a filter), when the page of the
  // view asked for comes (not an update of the view before, already on its way): not at every
  // session that starts or ends elsewhere, which on a busy fleet is every second.
  if (viewChanged && ofViewAsked(message)) {
    viewChanged = false;
    rangeSaid.textContent = shown || "No live session matches.";
  }
  const prev = pager.querySelector('[data-page="prev"]');
  const next = pager.querySelector('[data-page="next"]');
  const focused = document.activeElement;
  prev.hidden = message.page <= 1;
  next.hidden = message.page >= message.pages;
  prev.href = query({ page: message.page - 1 });
  next.href = query({ page: message.page + 1 });
  // The page link just followed is gone (the first or last page): the focus goes to the other
  // one, or to the range, rather than back to the top of the page.
  if ((focused === prev || focused === next) && focused.hidden) {
    const other = focused === prev ? next : prev;
    if (!other.hidden) other.focus();
    else {
      range.tabIndex = -1;
      range.focus();
    }
  }
  const models = filters.querySelector("[data-models]");
  const known = [...models.options].map((option) => option.value).slice(1);
  if (known.join("\n") !== message.models.join("\n")) {
    const chosen = models.value;
    models.replaceChildren(el("option", { value: "", text: "any" }), ...message.models.map((m) => el("option", { text: m })));
    models.value = chosen;
  }
  refreshAges(body);
}

// ---------------------------------------------------------------- changing the view

let live;
let viewChanged = false;
const rangeSaid = document.querySelector("[data-range-said]");

function change(next, { push = false } = {}) {
  view = next;
  viewChanged = true;
  const url = `${location.pathname}${query()}`.replace(/\?$/, "");
  if (push) history.pushState(view, "", url);
  else history.replaceState(view, "", url);
  document.querySelector("[data-clear]").hidden = query({ sort: DEFAULT_SORT, page: 1 }) === "?";
  headings();
  live?.send({ type: "watch.sessions", query: view });
}

function fromForm() {
  const next = {};
  for (const [key, value] of new FormData(filters)) if (value) next[key] = value.trim(); // sort: the menu
  return next; // a new search starts at page 1
}

let typing;
filters.addEventListener("input", (event) => {
  clearTimeout(typing);
  typing = setTimeout(() => change(fromForm()), event.target.type === "search" ? 200 : 0);
});
filters.addEventListener("submit", (event) => {
  event.preventDefault();
  change(fromForm(), { push: true });
});
filters.querySelector("[data-apply]").hidden = true; // it applies as you type
document.addEventListener("click", (event) => {
  const link = event.target.closest("[data-sort], [data-page], [data-clear]");
  if (!link || event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  const next = Object.fromEntries(new URL(link.href).searchParams);
  if (link.matches("[data-clear]")) {
    filters.reset();
    filters.querySelector("#q").focus(); // the link hides itself: the focus goes to the search
  }
  for (const input of filters.elements) if (input.name && input.name !== "sort") input.value = next[input.name] || "";
  change(next, { push: true });
});
window.addEventListener("popstate", () => {
  const next = Object.fromEntries(new URLSearchParams(location.search));
  for (const input of filters.elements) if (input.name && input.name !== "sort") input.value = next[input.name] || "";
  change(next);
});

// What works only with a script (the live status) is hidden until one runs.
for (const node of document.querySelectorAll("[data-script-only]")) node.hidden = false;
live = connectLive({
  subscribe: () => ({ type: "watch.sessions", query: view }),
  onState: (state) => showState(document.querySelector("[data-live-status]"), state),
  onMessage(message) {
    if (message.type === "sessions") show(message);
  },
});
headings();
tickAges();
