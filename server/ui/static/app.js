// SplitASR's page: the public APIs only. Live audio goes over the Realtime WebSocket
// (/v1/realtime?intent=transcription) as 24 kHz PCM16; files go to /v1/audio/transcriptions with
// stream=true and their text arrives as server-sent events.
'use strict';

const RATE_HZ = 24000;
const STOP_WAIT_MS = 15000; // after Stop, how long to wait for the last transcript
const $ = (id) => document.getElementById(id);

// --- REST helpers ------------------------------------------------------------------------------
function apiKey() { return $('api-key').value.trim(); }

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = !message;
}

async function guarded(task) {
  try { showError(''); await task(); } catch (err) { showError(err.message || String(err)); }
}

// --- status, models, adapters ------------------------------------------------------------------
async function refreshStatus() {
  try {
    const s = await (await fetch('/v1/status')).json();
    $('status').textContent = `${s.status} · ${s.backbone} on ${s.device || '…'} · queue ${s.queue.depth}/` +
      `${s.queue.capacity} · batch rows ${s.batch_rows.live}/${s.batch_rows.capacity} · adapter slots ` +
      `${s.adapter_slots.used}/${s.adapter_slots.capacity} · streams ${s.streams.active}/${s.streams.limit}`;
    $('status').dataset.state = s.status;
  } catch (_) {
    $('status').textContent = 'server unreachable';
    $('status').dataset.state = 'unreachable';
  }
}

async function refreshModels() {
  const { data } = await (await api('/v1/models')).json();
  const select = $('model');
  const previous = select.value;
  select.replaceChildren(...data.filter((m) => m.id !== 'whisper-1').map((m) => new Option(m.id, m.id)));
  if ([...select.options].some((o) => o.value === previous)) select.value = previous;
}

function formatBytes(n) {
  return n < 1024 * 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

async function refreshAdapters() {
  const { data } = await (await api('/v1/adapters')).json();
  const rows = data.map((a) => {
    const row = document.createElement('tr');
    for (const text of [a.id, a.kind, formatBytes(a.bytes), a.sha256.slice(0, 12)]) {
      row.appendChild(document.createElement('td')).textContent = text;
    }
    const button = document.createElement('button');
    button.type = 'button';
    button.className = 'secondary';
    button.textContent = 'Delete';
    button.dataset.testid = 'delete-adapter';
    button.addEventListener('click', () => guarded(async () => {
      await api(`/v1/adapters/${encodeURIComponent(a.id)}`, { method: 'DELETE' });
      await refreshAll();
    }));
    row.appendChild(document.createElement('td')).appendChild(button);
    return row;
  });
  $('adapters').tBodies[0].replaceChildren(...rows);
}

async function refreshAll() {
  await Promise.all([refreshModels(), refreshAdapters(), refreshStatus()]);
}

async function uploadAdapter(event) {
  event.preventDefault();
  const form = new FormData();
  form.append('name', $('adapter-name').value.trim());
  form.append('file', $('adapter-file').files[0]);
  await api('/v1/adapters', { method: 'POST', body: form });
  $('upload').reset();
  await refreshAll();
}

// --- transcript --------------------------------------------------------------------------------
const lines = new Map(); // item id -> <p>

function line(id, kind) {
  if (!lines.has(id)) {
    const p = document.createElement('p');
    p.className = `line ${kind} interim`;
    p.dataset.item = id;
    $('transcript').appendChild(p);
    lines.set(id, p);
  }
  return lines.get(id);
}

function appendText(id, kind, text) {
  const p = line(id, kind);
  p.textContent += text;
  p.scrollIntoView({ block: 'nearest' });
}

function finish(id, kind, text, failed = false) {
  const p = line(id, kind);
  p.textContent = text;
  p.classList.remove('interim');
  p.classList.add(failed ? 'failed' : 'final');
}

// --- microphone -> Realtime WebSocket ------------------------------------------------------------
let live = null; // { ws, ctx, stream, node, pending:Set }

function bytesToBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

function onRealtimeEvent(state, event) {
  switch (event.type) {
    case 'input_audio_buffer.speech_started':
      state.pending.add(event.item_id);
      line(event.item_id, 'live');
      break;
    case 'conversation.item.input_audio_transcription.delta':
      appendText(event.item_id, 'live', event.delta);
      break;
    case 'conversation.item.input_audio_transcription.completed':
      state.pending.delete(event.item_id);
      finish(event.item_id, 'live', event.transcript);
      break;
    case 'conversation.item.input_audio_transcription.failed':
      state.pending.delete(event.item_id);
      finish(event.item_id, 'live', `(failed: ${event.error.message})`, true);
      break;
    case 'error':
      if (event.error.code !== 'input_audio_buffer_commit_empty') showError(event.error.message);
      break;
    default:
      break;
  }
}

function openSocket(state) {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const key = apiKey();
  const protocols = key ? ['realtime', `openai-insecure-api-key.${key}`] : ['realtime'];
  const ws = new WebSocket(`${scheme}://${location.host}/v1/realtime?intent=transcription`, protocols);
  ws.onmessage = (message) => onRealtimeEvent(state, JSON.parse(message.data));
  ws.onclose = (close) => {
    if (live === state) stopRecording(false);
    if (close.code !== 1000 && close.reason) showError(`session closed: ${close.reason}`);
  };
  return new Promise((resolve, reject) => {
    ws.onopen = () => {
      ws.send(JSON.stringify({
        type: 'session.update',
        session: {
          type: 'transcription',
          audio: { input: {
            format: { type: 'audio/pcm', rate: RATE_HZ },
            transcription: { model: $('model').value },
            turn_detection: { type: 'server_vad' },
          } },
        },
      }));
      resolve(ws);
    };
    ws.onerror = () => reject(new Error('could not connect to the Realtime API'));
  });
}

async function startRecording() {
  const state = { pending: new Set() };
  state.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true } });
  try {
    state.ws = await openSocket(state);
    state.ctx = new AudioContext();
    await state.ctx.audioWorklet.addModule('pcm-worklet.js');
    state.node = new AudioWorkletNode(state.ctx, 'pcm16-resampler', { processorOptions: { targetRate: RATE_HZ } });
    state.node.port.onmessage = (message) => {
      if (state.ws.readyState === WebSocket.OPEN) {
        state.ws.send(JSON.stringify({ type: 'input_audio_buffer.append', audio: bytesToBase64(message.data) }));
      }
    };
    const mute = state.ctx.createGain();
    mute.gain.value = 0; // the graph must reach the destination to be processed; nothing is heard
    state.ctx.createMediaStreamSource(state.stream).connect(state.node).connect(mute).connect(state.ctx.destination);
  } catch (err) {
    state.stream.getTracks().forEach((t) => t.stop());
    if (state.ws) state.ws.close();
    throw err;
  }
  live = state;
  $('record').disabled = true;
  $('stop').disabled = false;
  $('live-state').textContent = `recording at ${state.ctx.sampleRate} Hz → ${RATE_HZ} Hz PCM`;
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

async function stopRecording(commit = true) {
  const state = live;
  if (!state) return;
  live = null;
  $('stop').disabled = true;
  state.stream.getTracks().forEach((t) => t.stop());
  if (commit && state.ws.readyState === WebSocket.OPEN) {
    $('live-state').textContent = 'finishing…';
    state.node.port.postMessage('flush');
    await sleep(300); // the flushed samples, then the commit
    state.ws.send(JSON.stringify({ type: 'input_audio_buffer.commit' }));
    const deadline = Date.now() + STOP_WAIT_MS;
    await sleep(500);
    while (state.pending.size && Date.now() < deadline && state.ws.readyState === WebSocket.OPEN) await sleep(100);
  }
  state.ws.close(1000);
  await state.ctx.close();
  $('record').disabled = false;
  $('live-state').textContent = 'microphone off';
}

// --- files -> stream=true ------------------------------------------------------------------------
let files = 0;

async function transcribeFile(file) {
  const id = `file-${++files}`;
  line(id, 'file').dataset.file = file.name;
  const form = new FormData();
  form.append('file', file);
  form.append('model', $('model').value);
  form.append('stream', 'true');
  const response = await api('/v1/audio/transcriptions', { method: 'POST', body: form });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const text of block.split('\n')) {
        if (!text.startsWith('data:')) continue;
        const event = JSON.parse(text.slice(5));
        if (event.type === 'transcript.text.delta') appendText(id, 'file', event.delta);
        else if (event.type === 'transcript.text.done') finish(id, 'file', event.text);
        else if (event.error) { finish(id, 'file', `(failed: ${event.error.message})`, true); }
      }
    }
  }
}

// --- wiring ------------------------------------------------------------------------------------
function init() {
  const key = $('api-key');
  key.value = localStorage.getItem('splitasr-api-key') || '';
  key.addEventListener('change', () => {
    localStorage.setItem('splitasr-api-key', apiKey());
    guarded(refreshAll);
  });
  $('refresh').addEventListener('click', () => guarded(refreshAll));
  $('record').addEventListener('click', () => guarded(startRecording));
  $('stop').addEventListener('click', () => guarded(stopRecording));
  $('clear').addEventListener('click', () => { $('transcript').replaceChildren(); lines.clear(); });
  $('upload').addEventListener('submit', (event) => guarded(() => uploadAdapter(event)));
  $('file').addEventListener('change', () => {
    const [file] = $('file').files;
    if (file) guarded(() => transcribeFile(file));
    $('file').value = '';
  });
  const drop = $('drop');
  drop.addEventListener('dragover', (event) => { event.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (event) => {
    event.preventDefault();
    drop.classList.remove('over');
    for (const file of event.dataTransfer.files) guarded(() => transcribeFile(file));
  });
  guarded(refreshAll);
  setInterval(refreshStatus, 5000);
}

init();
