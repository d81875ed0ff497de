// The console's live socket: /ws/console/, reconnecting with backoff. `subscribe` (a message,
// or a function giving the current one) is sent on every (re)connect; `send()` sends another; `onMessage` gets each JSON message; `onState` gets "live" | "reconnecting"
// | "logged out". `close()` ends it for good (no reconnect).
export function connectLive({ subscribe, onMessage, onState }) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const url = `${scheme}://${location.host}/ws/console/`;
  let delay = 500;
  let socket;
  let stopped = false;

  function open() {
    socket = new WebSocket(url);
    socket.addEventListener("open", () => {
      delay = 500;
      onState?.("live");
      socket.send(JSON.stringify(typeof subscribe === "function" ? subscribe() : subscribe));
    });
    socket.addEventListener("message", (event) => onMessage(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      if (stopped) return;
      if (event.code === 4401) {
        onState?.("logged out");
        return;
      }
      onState?.("reconnecting");
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 10000);
    });
  }
  open();
  return {
    send(message) {
      if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
    },
    close() {
      stopped = true;
      socket?.close();
    },
  };
}

const STATES = { live: "Live", "logged out": "Logged out: reload to log in", over: "Session over" };

// `words` may rename a state for one page (the session page says "Connected", apart from the
// session's own "live" badge). The element is a live region: its text is written only when it
// changes, or a screen reader would say "Reconnecting…" again at every retry.
export function showState(element, state, words = {}) {
  if (!element) return;
  const text = words[state] ?? STATES[state] ?? "Reconnecting…";
  if (element.textContent !== text) element.textContent = text;
  element.dataset.state = state;
}
