// Microphone samples (the AudioContext's rate, any) -> 16-bit PCM at the target rate, posted in
// chunks of about 100 ms. Linear interpolation is enough for speech: the VAD and Whisper see 16 kHz.
class Pcm16Resampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.target = (options.processorOptions && options.processorOptions.targetRate) || 24000;
    this.step = sampleRate / this.target; // input samples per output sample
    this.position = 0; // where the next output sample falls, in input samples from `last`
    this.last = 0; // the previous block's final input sample
    this.chunk = new Int16Array(Math.round(this.target / 10));
    this.filled = 0;
    this.port.onmessage = (event) => { if (event.data === 'flush') this.flush(); };
  }

  flush() {
    if (this.filled) this.port.postMessage(this.chunk.slice(0, this.filled).buffer);
    this.filled = 0;
  }

  emit(value) {
    const clipped = Math.max(-1, Math.min(1, value));
    this.chunk[this.filled++] = clipped < 0 ? clipped * 0x8000 : clipped * 0x7fff;
    if (this.filled === this.chunk.length) this.flush();
  }

  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    // sample i of this block sits at i + 1 (0 is `last`)
    while (this.position <= input.length) {
      const i = Math.floor(this.position);
      const frac = this.position - i;
      const a = i === 0 ? this.last : input[i - 1];
      const b = i < input.length ? input[i] : a;
      this.emit(a + (b - a) * frac);
      this.position += this.step;
    }
    this.position -= input.length;
    this.last = input[input.length - 1];
    return true;
  }
}

registerProcessor('pcm16-resampler', Pcm16Resampler);
