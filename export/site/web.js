// The static p2p page (p2p-export --web): the shared drawing canvas (draw.js), and the model
// running in this browser, in a Web Worker (worker.js), through onnxruntime-web.
//
// For tests and embedding:
//   await window.p2p.ready                    // resolves with info once the model is loaded
//   window.p2p.info                           // {backend, threads, isolated, note, metadata, ...}
//   await window.p2p.translate(imageData)     // -> ImageData, what p2p-translate would write
// URL parameters: ?backend=wasm|webgpu (default: WebGPU where an adapter exists), ?threads=N.
"use strict";

const $ = (id) => document.getElementById(id);
const { state, canvas, ctx, output, download, setStatus } = P2PDraw;
const params = new URLSearchParams(location.search);
const worker = new Worker(new URL("worker.js", import.meta.url), { type: "module" });
const pending = new Map();
let nextId = 1;
let readyResolve, readyReject;

const p2p = {
  info: null,
  ready: new Promise((resolve, reject) => { readyResolve = resolve; readyReject = reject; }),
  last: null,  // timings of the last translation: {pre, run, post, total, page}
  translate,
};
window.p2p = p2p;

worker.onmessage = (e) => {
  const msg = e.data;
  if (msg.type === "ready") {
    p2p.info = msg.info;
    readyResolve(msg.info);
  } else if (msg.type === "result" || msg.type === "error") {
    const job = pending.get(msg.id);
    if (msg.type === "error" && !job) return readyReject(new Error(msg.error));
    pending.delete(msg.id);
    if (msg.type === "error") job.reject(new Error(msg.error));
    else job.resolve(msg);
  }
};
worker.onerror = (e) => readyReject(new Error(e.message || "the worker failed to start"));

// ImageData (any size, RGBA) -> Promise<ImageData> at the input's size (after a 2:1 split).
async function translate(image) {
  await p2p.ready;
  const t0 = performance.now();
  const copy = new Uint8ClampedArray(image.data);  // the caller keeps its own pixels
  const msg = await new Promise((resolve, reject) => {
    const id = nextId++;
    pending.set(id, { resolve, reject });
    worker.postMessage({ type: "translate", id, width: image.width, height: image.height,
                         data: copy.buffer }, [copy.buffer]);
  });
  p2p.last = { ...msg.ms, page: performance.now() - t0, half: msg.half };
  return new ImageData(new Uint8ClampedArray(msg.data), msg.width, msg.height);
}

// --- the page: translate the drawing (or the uploaded image) and show it -------------------

async function show(image) {
  const c = new OffscreenCanvas(image.width, image.height);
  c.getContext("2d").putImageData(image, 0, 0);
  const blob = await c.convertToBlob({ type: "image/png" });
  if (state.url) URL.revokeObjectURL(state.url);
  state.url = URL.createObjectURL(blob);
  output.src = state.url;
  download.href = state.url;
  download.classList.remove("disabled");
}

async function translateShown(source) {
  if (state.busy) {  // one translation at a time; the newest drawing goes next
    state.again = source || true;
    return;
  }
  state.busy = true;
  try {
    const image = source || ctx.getImageData(0, 0, canvas.width, canvas.height);
    const result = await translate(image);
    await show(result);
    const t = p2p.last, info = p2p.info;
    setStatus(`translated in ${Math.round(t.page)} ms (model ${Math.round(t.run)} ms) on ` +
              `${info.backend}${info.backend === "wasm" ? `, ${info.threads} thread` +
              `${info.threads > 1 ? "s" : ""}` : ""}`);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    state.busy = false;
    if (state.again) {
      const next = state.again;
      state.again = false;
      translateShown(next === true ? undefined : next);
    }
  }
}
P2PDraw.translate = translateShown;

// The canvas is ready from model.json (a few kB) while the model itself still loads: a
// visitor may draw at once; the first translation waits for the worker.
async function init() {
  $("model").textContent = "loading the model…";
  worker.postMessage({ type: "init", backend: params.get("backend") || "auto",
                       threads: Number(params.get("threads")) || 0 });
  try {
    const doc = await (await fetch("model.json")).json();
    const m = doc.metadata;
    state.info = m;
    P2PDraw.ready(m.dynamic_size ? Math.max(256, m.size_multiple) : m.image_size,
                  doc.page && doc.page.palette);
    const info = await p2p.ready;
    const where = info.backend === "wasm"
      ? `WASM, ${info.threads} thread${info.threads > 1 ? "s" : ""}` : "WebGPU";
    $("model").textContent = `${m.direction} · ${m.image_size}px · ${m.model_precision} · ` +
      `in this browser on ${where}`;
    $("backend").textContent = info.note || (info.isolated ? "cross-origin isolated" : "");
    document.body.dataset.backend = info.backend;
  } catch (err) {
    if (document.body.dataset.ready !== "1") P2PDraw.ready();
    $("model").textContent = "the model did not load";
    setStatus(err.message, true);
  }
}
init();
