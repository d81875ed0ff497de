// Listen-in (CONTRACT section 6): the call's two sides, live, in the browser. The audio socket
// sends binary frames (byte 0 the side: 0 caller, 1 agent; then PCM16 little-endian mono
// 24 kHz) after a `listen.started` text frame. Each side has its own player (an AudioWorklet
// with a jitter buffer), level meter and mute. Stopping, the call's end and leaving the page
// close the socket and the audio.
const SIDES = ["caller", "agent"];
const box = document.querySelector("[data-listen]");
const REDUCED_MOTION = matchMedia("(prefers-reduced-motion: reduce)");

function status(text, state) {
  const shown = box.querySelector("[data-listen-status]");
  shown.textContent = text;
  shown.dataset.state = state;
}

class Listening {
  constructor() {
    this.socket = null;
    this.context = null;
    this.sides = [];
    this.frame = 0;
  }

  async start() {
    this.context = new AudioContext({ sampleRate: 24000, latencyHint: "interactive" });
    await this.context.audioWorklet.addModule(box.dataset.workletUrl);
    this.sides = SIDES.map((name, index) => {
      const player = new AudioWorkletNode(this.context, "listen-player", {
        numberOfInputs: 0,
        numberOfOutputs: 1,
        outputChannelCount: [2],
      });
      const analyser = new AnalyserNode(this.context, { fftSize: 1024 });
      const gain = new GainNode(this.context, { gain: this.muted(index) ? 0 : 1 });
      player.connect(analyser).connect(gain).connect(this.context.destination);
      return { name, player, analyser, gain, meter: box.querySelector(`[data-level="${index}"]`), samples: 0 };
    });
    await this.context.resume();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    this.socket = new WebSocket(`${scheme}://${location.host}${box.dataset.listenUrl}`);
    this.socket.binaryType = "arraybuffer";
    this.socket.onmessage = (event) => this.receive(event.data);
    this.socket.onclose = (event) => this.closed(event);
    status("Connecting…", "connecting");
    this.meters();
  }

  receive(data) {
    if (typeof data === "string") {
      const message = JSON.parse(data);
      if (message.type === "listen.started") status("Listening", "live");
      else if (message.type === "listen.cut") this.sides[message.side]?.player.port.postMessage("cut");
      else if (message.type === "listen.ended") status("The call ended", "over");
      else if (message.type === "error") status(message.message, "error");
      return;
    }
    const side = this.sides[new Uint8Array(data, 0, 1)[0]];
    if (!side) return;
    const pcm = new Int16Array(data.slice(1));
    const samples = new Float32Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) samples[i] = pcm[i] / 32768;
    side.samples += samples.length;
    side.player.port.postMessage(samples, [samples.buffer]);
    box.dataset[`${side.name}Samples`] = side.samples;
  }

  closed(event) {
    // The call's end, or why listening could not go on, stays on the page.
    const shown = box.querySelector("[data-listen-status]").dataset.state;
    if (shown !== "over" && shown !== "error") {
      status(event.code === 1000 ? "Stopped" : `Stopped (${event.reason || `code ${event.code}`})`, "stopped");
    }
    this.stop();
  }

  meters() {
    const data = new Float32Array(1024);
    let drawn = 0;
    const draw = (now) => {
      if (!this.context) return;
      this.frame = requestAnimationFrame(draw);
      // With less motion asked for, the levels move four times a second, not at every frame.
      if (REDUCED_MOTION.matches && now - drawn < 250) return;
      drawn = now;
      for (const side of this.sides) {
        side.analyser.getFloatTimeDomainData(data);
        let sum = 0;
        for (const x of data) sum += x * x;
        const level = Math.min(1, Math.sqrt(sum / data.length) * 4);
        side.meter.value = level;
        if (level > Number(side.meter.dataset.peak || 0)) side.meter.dataset.peak = level.toFixed(3);
      }
    };
    draw(performance.now());
  }

  muted(index) {
    return box.querySelector(`[data-mute="${index}"]`).getAttribute("aria-pressed") === "true";
  }

  mute(index, muted) {
    const side = this.sides[index];
    if (side) side.gain.gain.value = muted ? 0 : 1;
  }

  stop() {
    cancelAnimationFrame(this.frame);
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
    this.socket = null;
    if (this.context) this.context.close();
    this.context = null;
    for (const side of this.sides) side.meter.value = 0;
    this.sides = [];
    box.querySelector("[data-listen-toggle]").setAttribute("aria-pressed", "false");
  }
}

if (box) {
  let listening = null;
  const toggle = box.querySelector("[data-listen-toggle]");
  toggle.addEventListener("click", async () => {
    if (listening && listening.context) {
      listening.stop();
      status("Stopped", "stopped");
      return;
    }
    // Its name stays "Listen" (WAI-ARIA's toggle button): pressed says it is on, and pressing
    // it again stops. A name flipping to "Stop listening" was read as "Stop listening, pressed".
    toggle.setAttribute("aria-pressed", "true");
    listening = new Listening();
    try {
      await listening.start();
    } catch (error) {
      status(`Cannot play audio here: ${error.message}`, "error");
      listening.stop();
    }
  });
  box.addEventListener("click", (event) => {
    const button = event.target.closest("[data-mute]");
    if (!button) return;
    const muted = button.getAttribute("aria-pressed") !== "true";
    // Its name stays "Mute the caller": pressed says it is muted (a name flipping to "Unmute"
    // as well read "Unmute, pressed" to a screen reader).
    button.setAttribute("aria-pressed", String(muted));
    listening?.mute(Number(button.dataset.mute), muted);
  });
  window.addEventListener("pagehide", () => listening?.stop());
  // The session ended while the page was open: nothing more to hear (as the page reloaded).
  document.addEventListener("oc:session-ended", () => {
    listening?.stop();
    box.remove();
  });
}
