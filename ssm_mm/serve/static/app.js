// ssm_mm live page: streams a local video file (played in real time) or the webcam + microphone to
// the server over one WebSocket (protocol: the ssm_mm.serve package docstring) and shows the model's
// tick labels, proactive responses and answers on a timeline at their stream times.
// Frames: the playing video drawn on a canvas at the model's fps and size, sent as raw RGB.
// Audio: WebAudio (the element's or the microphone's sound, mixed to mono), sent as float32 PCM at
// the audio context's rate; the server resamples. No build step: plain browser JavaScript.
"use strict";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const token = params.get("token");
const state = { ws: null, info: null, mode: null, t0wall: 0, audioT0: null, samples: 0, lastFrame: -1,
  qid: 0, timer: null, ctx: null, stream: null, ticks: 0, lastLabel: null, closing: false };

function setStatus(text) { $("status").textContent = text; }

function wsUrl() {
  const u = new URL("ws", location.href);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  if (token) u.searchParams.set("token", token);
  return u.href;
}

// [uint32 LE header length][JSON header][payload]
function mediaMessage(header, bytes) {
  const h = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(4 + h.length + bytes.byteLength);
  new DataView(out.buffer).setUint32(0, h.length, true);
  out.set(h, 4);
  out.set(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), 4 + h.length);
  return out;
}

function streamTime() {
  const v = $("video");
  return state.mode === "file" ? v.currentTime : (performance.now() - state.t0wall) / 1000;
}

function color(index) {
  return index === 0 ? "#d5dae3" : `hsl(${(index * 83) % 360} 70% 50%)`;
}

function row(kind, t, text) {
  const r = document.createElement("div");
  r.className = "row " + kind;
  r.dataset.t = t;
  r.innerHTML = `<span class="t">${t.toFixed(2)}s</span><span class="kind"></span><span class="text"></span>`;
  r.querySelector(".kind").textContent = kind;
  r.querySelector(".text").textContent = text;
  // keep the timeline in stream-time order (answers can come after later labels)
  const tl = $("timeline");
  let before = null;
  for (const other of tl.children) if (parseFloat(other.dataset.t) > t) { before = other; break; }
  tl.insertBefore(r, before);
  if (!before) tl.scrollTop = tl.scrollHeight;
}

function onMessage(ev) {
  const m = JSON.parse(ev.data);
  if (m.type === "ready") {
    state.info = m;
    $("legend").innerHTML = m.labels.map((l, i) => `<span><i style="background:${color(i)}"></i>${l}</span>`).join("");
    setStatus(`session ${m.session}: streaming (${m.fps} fps, tick ${m.tick_seconds}s)`);
    startCapture();
  } else if (m.type === "label") {
    if (document.querySelector(`#strip .tick[data-tick="${m.tick}"]`)) return; // sent again after a resume
    const d = document.createElement("div");
    d.className = "tick";
    Object.assign(d.dataset, { tick: m.tick, label: m.label, start: m.start });
    d.style.background = color(m.index);
    d.title = `${m.start.toFixed(1)}s ${m.label} p=${m.score.toFixed(2)}`;
    $("strip").appendChild(d);
    state.ticks += 1;
    $("now").textContent = m.label;
    if (m.label !== state.lastLabel) row("label", m.start, `${m.label}  (p=${m.score.toFixed(2)})`);
    state.lastLabel = m.label;
  } else if (m.type === "response") {
    row("response", m.t, m.text);
  } else if (m.type === "answer") {
    row("answer", m.t, m.text);
  } else if (m.type === "error") {
    row("error", streamTime(), `${m.code}: ${m.message}`);
  } else if (m.type === "closed") {
    setStatus(`stream ended: ${m.ticks} ticks, ${m.time.toFixed(1)} s`);
    document.body.dataset.closed = "1";
  }
}

async function start(mode) {
  state.mode = mode;
  const v = $("video");
  if (mode === "file") {
    v.srcObject = null;
    v.src = URL.createObjectURL($("file").files[0]);
    v.muted = false;
  } else {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
    v.srcObject = state.stream;
    v.muted = true; // no echo of the microphone
  }
  $("timeline").innerHTML = ""; $("strip").innerHTML = ""; delete document.body.dataset.closed;
  Object.assign(state, { audioT0: null, samples: 0, lastFrame: -1, ticks: 0, lastLabel: null, closing: false });
  const ws = new WebSocket(wsUrl());
  ws.binaryType = "arraybuffer";
  state.ws = ws;
  ws.onmessage = onMessage;
  ws.onclose = (e) => { stopCapture(); if (!document.body.dataset.closed) setStatus(`connection closed (${e.code} ${e.reason})`); };
  ws.onopen = () => ws.send(JSON.stringify({ type: "open", modalities: ["video", "audio"] }));
  for (const id of ["start-file", "start-cam"]) $(id).disabled = true;
  $("stop").disabled = false; $("ask").disabled = false;
}

function startCapture() {
  const v = $("video"), info = state.info;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = info.frame_size;
  const g = canvas.getContext("2d", { willReadFrequently: true });
  state.ctx = new AudioContext();
  const ctx = state.ctx;
  const src = state.mode === "file" ? ctx.createMediaElementSource(v) : ctx.createMediaStreamSource(state.stream);
  if (state.mode === "file") src.connect(ctx.destination); // hear the file
  const proc = ctx.createScriptProcessor(4096, 2, 1);
  const mute = ctx.createGain(); mute.gain.value = 0;
  src.connect(proc); proc.connect(mute); mute.connect(ctx.destination);
  proc.onaudioprocess = (e) => {
    if (!state.ws || state.ws.readyState !== 1 || state.closing) return;
    if (state.mode === "file" && (v.paused || v.ended)) return;
    const ib = e.inputBuffer, n = ib.length, x = new Float32Array(n);
    for (let c = 0; c < ib.numberOfChannels; c++) {
      const ch = ib.getChannelData(c);
      for (let i = 0; i < n; i++) x[i] += ch[i] / ib.numberOfChannels;
    }
    if (state.audioT0 === null) state.audioT0 = Math.max(0, streamTime() - n / ctx.sampleRate);
    const t0 = state.audioT0 + state.samples / ctx.sampleRate;
    state.samples += n;
    state.ws.send(mediaMessage({ type: "audio", t0, rate: ctx.sampleRate, format: "f32", channels: 1 }, x));
  };
  state.proc = proc;
  state.t0wall = performance.now();
  state.timer = setInterval(() => {
    if (!state.ws || state.ws.readyState !== 1 || state.closing) return;
    if (state.mode === "file" && (v.paused || v.ended)) return;
    const t = streamTime();
    if (t <= state.lastFrame || v.readyState < 2) return;
    state.lastFrame = t;
    g.drawImage(v, 0, 0, canvas.width, canvas.height);
    const rgba = g.getImageData(0, 0, canvas.width, canvas.height).data;
    const rgb = new Uint8Array(canvas.width * canvas.height * 3);
    for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) { rgb[j] = rgba[i]; rgb[j + 1] = rgba[i + 1]; rgb[j + 2] = rgba[i + 2]; }
    state.ws.send(mediaMessage({ type: "video", t, format: "rgb", width: canvas.width, height: canvas.height }, rgb));
  }, 1000 / info.fps);
  if (state.mode === "file") {
    v.onended = () => setTimeout(finish, 300); // let the last audio block go out first
  }
  ctx.resume();
  v.play();
}

function stopCapture() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
  if (state.proc) state.proc.onaudioprocess = null;
  if (state.ctx) state.ctx.close();
  state.ctx = null;
  if (state.stream) state.stream.getTracks().forEach((tr) => tr.stop());
  state.stream = null;
  for (const id of ["start-cam"]) $(id).disabled = false;
  $("start-file").disabled = !$("file").files.length;
  $("stop").disabled = true;
}

function finish() {
  if (!state.ws || state.ws.readyState !== 1 || state.closing) return;
  state.closing = true;
  $("video").pause();
  state.ws.send(JSON.stringify({ type: "close" }));
  setStatus("closing: waiting for the last results");
}

function ask() {
  const text = $("question").value.trim();
  if (!text || !state.ws || state.ws.readyState !== 1) return;
  const t = streamTime();
  state.qid += 1;
  state.ws.send(JSON.stringify({ type: "ask", id: state.qid, text, t }));
  row("question", t, text);
  $("question").value = "";
}

$("file").onchange = () => { $("start-file").disabled = !$("file").files.length; };
$("start-file").onclick = () => start("file");
$("start-cam").onclick = () => start("camera").catch((e) => setStatus(`camera: ${e.message}`));
$("stop").onclick = finish;
$("ask").onclick = ask;
$("question").onkeydown = (e) => { if (e.key === "Enter") ask(); };
