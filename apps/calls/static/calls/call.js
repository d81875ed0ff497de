// "Call the agent": a WebRTC call from this browser through POST /v1/realtime/calls.
// The page's login (session cookie + CSRF token) authorises the call; the server forwards the
// offer upstream with its own key, answers with the upstream's SDP, and attaches the call to
// a console session. Events arrive on the `oai-events` data channel; the agent's audio on the
// peer connection's track.
import { el } from "../console/js/dom.js";

const main = document.querySelector("main");
const callButton = document.querySelector("[data-call]");
const hangupButton = document.querySelector("[data-hangup]");
const badge = document.querySelector("[data-call-badge]");
const status = document.querySelector("[data-call-status]");
const sessionNote = document.querySelector("[data-call-session]");
const sessionLink = document.querySelector("[data-call-session-link]");
const transcript = document.querySelector("[data-transcript]");
const turnsSaid = document.querySelector("[data-announce-turns]");
const eventList = document.querySelector("[data-call-events]");
const agentAudio = document.querySelector("[data-agent-audio]");
const csrfToken = document.querySelector("input[name=csrfmiddlewaretoken]").value;

const EVENTS_SHOWN = 60;
const ICE_GATHERING_TIMEOUT_MS = 3000;
const SESSION_POLL_MS = 500;
const SESSION_POLL_TRIES = 60;
const HANGUP_TIMEOUT_MS = 3000;

let call = null; // { pc, channel, microphone, callId, ended }

const clockFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });

function show(state, text, tone = "") {
  badge.dataset.state = state;
  badge.textContent = { idle: "Not in a call", connecting: "Connecting", live: "In a call", ended: "Call ended", failed: "Call failed" }[state];
  status.textContent = text;
  if (tone) status.dataset.tone = tone; else delete status.dataset.tone;
  main.dataset.callState = state;
}

// An event's type, breakable after each dot on a narrow screen.
function typeName(type) {
  return el("code", {}, type.split(".").flatMap((part, i) => (i ? [el("wbr"), `.${part}`] : [part])));
}

// Newest first; a run of the same type (a reply's deltas) is one row with a count.
function logEvent(type) {
  const now = new Date();
  const time = el("time", { dateTime: now.toISOString(), text: clockFormat.format(now) });
  const newest = eventList.firstElementChild;
  if (newest && newest.dataset.type === type) {
    const count = Number(newest.dataset.count) + 1;
    newest.dataset.count = count;
    newest.querySelector("time").replaceWith(time);
    newest.querySelector(".count").textContent = ` ×${count}`;
    return;
  }
  eventList.prepend(el("li", { "data-type": type, "data-count": 1 }, time, el("span", {}, typeName(type), el("span", { class: "count muted" }))));
  while (eventList.children.length > EVENTS_SHOWN) eventList.lastElementChild.remove();
}

// Transcript entries: one per item (the caller's turns) or per response (the agent's).
const entries = new Map();

function entry(key, role, who) {
  let node = entries.get(key);
  if (!node) {
    node = el("li", { class: `entry role-${role}` }, el("span", { class: "who", text: who }), el("p"));
    entries.set(key, node);
    transcript.append(node);
    transcript.scrollTop = transcript.scrollHeight;
  }
  return node;
}

function appendText(key, role, who, text, { streaming = true } = {}) {
  if (!text && !entries.has(key)) return;
  const node = entry(key, role, who);
  node.querySelector("p").textContent += text;
  node.classList.toggle("streaming", streaming);
}

function setText(key, role, who, text) {
  if (!text && !entries.has(key)) return; // nothing said (an interrupted reply): no empty entry
  const node = entry(key, role, who);
  node.querySelector("p").textContent = text;
  node.classList.remove("streaming");
  if (text && text !== SPEECH) say(`${who}: ${text}`);
}

// A whole turn, read out once (the last few kept, as a log).
function say(text) {
  turnsSaid.append(el("p", { text }));
  while (turnsSaid.children.length > 5) turnsSaid.firstElementChild.remove();
}

// The caller's words: typed text, a transcript, or "(speech)" for audio not (yet) transcribed.
const SPEECH = "(speech)";
function userText(item) {
  const parts = item.content || [];
  const text = parts.map((part) => part.text || part.transcript || "").join(" ").trim();
  return text || (parts.some((part) => part.type === "input_audio") ? SPEECH : "");
}

function onServerEvent(event) {
  logEvent(event.type || "(no type)");
  switch (event.type) {
    case "session.created":
      show("live", "The agent is listening. Speak, or wait for it.");
      break;
    case "conversation.item.added":
    case "conversation.item.created": {
      const item = event.item || {};
      const text = item.role === "user" ? userText(item) : "";
      if (text && !entries.has(`item:${item.id}`)) setText(`item:${item.id}`, "user", "You", text);
      break;
    }
    case "conversation.item.input_audio_transcription.completed":
      if (event.transcript) setText(`item:${event.item_id}`, "user", "You", event.transcript);
      break;
    case "response.output_audio_transcript.delta":
    case "response.output_text.delta":
      appendText(`response:${event.response_id}`, "agent", "Agent", event.delta || "");
      break;
    case "response.output_audio_transcript.done":
    case "response.output_text.done":
      setText(`response:${event.response_id}`, "agent", "Agent", event.transcript ?? event.text ?? "");
      break;
    case "response.done": {
      const node = entries.get(`response:${event.response?.id}`);
      if (node) node.classList.remove("streaming");
      break;
    }
    case "error":
      setText(`error:${event.event_id}`, "system", "Error", event.error?.message || "The service sent an error.");
      break;
    default:
      break;
  }
}

function iceGathered(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { pc.removeEventListener("icegatheringstatechange", check); clearTimeout(timer); resolve(); };
    const check = () => { if (pc.iceGatheringState === "complete") done(); };
    const timer = setTimeout(done, ICE_GATHERING_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function refusal(response) {
  try {
    const body = await response.json();
    return body.error?.message || `The server answered ${response.status}.`;
  } catch {
    return `The server answered ${response.status}.`;
  }
}

async function findSession(current) {
  for (let i = 0; i < SESSION_POLL_TRIES && !current.ended; i += 1) {
    const response = await fetch(`${main.dataset.sessionUrl}?call_id=${encodeURIComponent(current.callId)}`, { headers: { Accept: "application/json" } });
    const session = response.ok ? await response.json() : null;
    if (session?.session_id) {
      current.hangupUrl = session.hangup_url;
      sessionLink.href = session.url;
      sessionLink.textContent = session.session_id;
      sessionNote.hidden = false;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, SESSION_POLL_MS));
  }
}

async function startCall() {
  callButton.disabled = true;
  hangupButton.disabled = false;
  transcript.replaceChildren();
  eventList.replaceChildren();
  entries.clear();
  sessionNote.hidden = true;
  show("connecting", "Asking for your microphone…");
  const current = { ended: false };
  call = current;
  try {
    current.microphone = await navigator.mediaDevices.getUserMedia({ audio: true });
    if (current.ended) return;
    const pc = new RTCPeerConnection();
    current.pc = pc;
    pc.addEventListener("track", (event) => { agentAudio.srcObject = event.streams[0] || new MediaStream([event.track]); });
    for (const track of current.microphone.getTracks()) pc.addTrack(track, current.microphone);
    const channel = pc.createDataChannel("oai-events");
    current.channel = channel;
    channel.addEventListener("message", (message) => {
      try { onServerEvent(JSON.parse(message.data)); } catch { logEvent("(a frame that is not JSON)"); }
    });
    channel.addEventListener("close", () => endCall("The call ended."));
    pc.addEventListener("connectionstatechange", () => {
      if (pc.connectionState === "failed") endCall("The connection to the agent failed.", true);
    });
    show("connecting", "Calling the agent…");
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);
    if (current.ended) return;
    const response = await fetch(main.dataset.callsUrl, {
      method: "POST",
      headers: { "Content-Type": "application/sdp", "X-CSRFToken": csrfToken },
      body: pc.localDescription.sdp,
      credentials: "same-origin",
    });
    if (response.status !== 201) {
      endCall(`The call was refused: ${await refusal(response)}`, true);
      return;
    }
    current.callId = (response.headers.get("Location") || "").split("/").pop();
    await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
    main.dataset.callId = current.callId;
    findSession(current);
  } catch (error) {
    endCall(`The call could not start: ${error.message || error}`, true);
  }
}

function endCall(text = "You hung up.", failed = false) {
  const current = call;
  if (!current || current.ended) return;
  current.ended = true;
  if (current.channel) current.channel.close();
  if (current.pc) current.pc.close();
  if (current.microphone) for (const track of current.microphone.getTracks()) track.stop();
  agentAudio.srcObject = null;
  for (const node of entries.values()) node.classList.remove("streaming");
  callButton.disabled = false;
  hangupButton.disabled = true;
  show(failed ? "failed" : "ended", text, failed ? "bad" : "");
}

// Hang up through the console (as the session page's Hang up does), so that the call ends
// `hung_up` with who did it; closing the connection alone ends it `upstream_closed`. The call
// ends here either way, answered or not.
async function hangUp({ leaving = false } = {}) {
  const current = call;
  if (current && !current.ended && current.hangupUrl) {
    hangupButton.disabled = true;
    const asked = fetch(current.hangupUrl, {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken, Accept: "application/json" },
      credentials: "same-origin",
      keepalive: true,
      signal: AbortSignal.timeout(HANGUP_TIMEOUT_MS),
    }).catch(() => null);
    if (!leaving) await asked;
  }
  endCall(leaving ? undefined : "You hung up.");
}

callButton.addEventListener("click", startCall);
hangupButton.addEventListener("click", () => hangUp());
window.addEventListener("pagehide", () => hangUp({ leaving: true }));
