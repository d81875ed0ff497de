// The listen-in player: one side of the call (PCM16 → Float32 done by listen.js), played
// from a small jitter buffer. It starts once PREBUFFER samples are in, plays silence when it
// runs dry (and buffers again), and drops the oldest audio beyond MAX_BUFFER so that a burst
// (the agent's audio comes faster than real time) never turns into a growing delay. "cut"
// drops what waits: the caller cut the reply short.
const PREBUFFER = 2400; // 100 ms at 24 kHz
const MAX_BUFFER = 24000 * 30; // the longest reply the service sends ahead of playback

class ListenPlayer extends AudioWorkletProcessor {
  constructor() {
    super();
    this.chunks = [];
    this.offset = 0; // into chunks[0]
    this.buffered = 0;
    this.playing = false;
    this.port.onmessage = (event) => {
      if (event.data === "cut") { // the caller cut this reply short: what waits is not heard
        this.chunks = [];
        this.offset = this.buffered = 0;
        this.playing = false;
        return;
      }
      const samples = event.data;
      this.chunks.push(samples);
      this.buffered += samples.length;
      while (this.buffered > MAX_BUFFER) {
        this.buffered -= this.chunks[0].length - this.offset;
        this.chunks.shift();
        this.offset = 0;
      }
    };
  }

  process(inputs, outputs) {
    const channels = outputs[0];
    const out = channels[0];
    if (!this.playing && this.buffered >= PREBUFFER) this.playing = true;
    let written = 0;
    while (this.playing && written < out.length && this.chunks.length) {
      const chunk = this.chunks[0];
      const n = Math.min(out.length - written, chunk.length - this.offset);
      out.set(chunk.subarray(this.offset, this.offset + n), written);
      written += n;
      this.offset += n;
      this.buffered -= n;
      if (this.offset === chunk.length) {
        this.chunks.shift();
        this.offset = 0;
      }
    }
    out.fill(0, written);
    if (this.buffered === 0) this.playing = false;
    for (let c = 1; c < channels.length; c++) channels[c].set(out);
    return true;
  }
}

registerProcessor("listen-player", ListenPlayer);
