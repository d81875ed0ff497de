// /console/: the live sessions table and the top-line figures, patched from the feed.
import { el, refreshAges, tickAges } from "./dom.js";
import { connectLive, showState } from "./live.js";

const body = document.querySelector("[data-sessions] tbody");
const empty = document.querySelector("[data-empty]");
const figures = {
  live: document.querySelector('[data-figure="live"]'),
  nudges: document.querySelector('[data-figure="nudges"]'),
  latency: document.querySelector('[data-figure="latency"]'),
};

function row(session) {
  const state = [el("span", { class: `badge state-${session.state}`, text: session.state })];
  if (session.queued) state.push(" ", el("span", { class: "badge state-queued", text: `${session.queued} queued` }));
  return el(
    "tr",
    { "data-session": session.id },
    el("td", {}, el("a", { href: `/console/sessions/${encodeURIComponent(session.id)}/`, text: session.id })),
    el("td", {}, state),
    el("td", { text: session.model }),
    el("td", { "data-since": session.started_at }),
    el("td", { text: session.connected_by || "—" }),
    el("td", { text: session.requests }),
    el("td", { "data-since": session.last_activity }),
    el("td", { text: session.watchers.length ? session.watchers.join(", ") : "—" }),
  );
}

function upsert(session) {
  const fresh = row(session);
  const old = body.querySelector(`tr[data-session="${CSS.escape(session.id)}"]`);
  if (old) old.replaceWith(fresh);
  else body.prepend(fresh);
}

function stats(values) {
  figures.live.textContent = body.rows.length;
  figures.nudges.textContent = values.nudges_last_minute;
  const latency = values.median_nudge_to_start_ms;
  figures.latency.textContent = latency === null || latency === undefined ? "—" : `${latency} ms`;
  empty.hidden = body.rows.length > 0;
}

connectLive({
  subscribe: { type: "watch.sessions" },
  onState: (state) => showState(document.querySelector("[data-live-status]"), state),
  onMessage(message) {
    if (message.type === "sessions") {
      body.replaceChildren(...message.sessions.map(row));
    } else if (message.type === "sessions.update") {
      for (const id of message.remove) body.querySelector(`tr[data-session="${CSS.escape(id)}"]`)?.remove();
      for (const session of message.upsert) upsert(session);
    } else {
      return;
    }
    stats(message.stats);
    refreshAges(body);
  },
});
tickAges();
