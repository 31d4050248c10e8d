// p2p-serve's drawing page: the shared canvas (draw.js) sends each drawing to POST
// /translate and shows the answer. Plain browser JavaScript, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const { state, canvas, output, download, setStatus } = P2PDraw;

// --- translation ---------------------------------------------------------------------------

async function translate() {  // the uploaded image itself goes as drawn on the canvas
  if (state.busy) {  // one request at a time; the newest drawing goes next
    state.again = true;
    return;
  }
  state.busy = true;
  try {
    const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
    const t0 = performance.now();
    const res = await fetch("/translate?format=png", {
      method: "POST", body: blob, headers: { "Content-Type": "image/png" },
    });
    if (!res.ok) {
      const body = await res.json().catch(() => ({ error: res.statusText }));
      throw new Error(`translate failed (${res.status}): ${body.error}`);
    }
    const result = await res.blob();
    if (state.url) URL.revokeObjectURL(state.url);
    state.url = URL.createObjectURL(result);
    output.src = state.url;
    download.href = state.url;
    download.classList.remove("disabled");
    const ms = Math.round(performance.now() - t0);
    setStatus(`translated in ${ms} ms (batch of ${res.headers.get("X-P2P-Batch-Size")})`);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    state.busy = false;
    if (state.again) {
      state.again = false;
      translate();
    }
  }
}

P2PDraw.translate = translate;

async function init() {
  let size = canvas.width;
  try {
    const info = await (await fetch("/healthz")).json();
    state.info = info;
    // Fixed-size models get a canvas of their size (nothing is resampled); dynamic ones 256.
    size = info.dynamic_size ? Math.max(256, info.size_multiple) : info.image_size;
    $("model").textContent = `${info.model} · ${info.direction} · ${info.image_size}px` +
      `${info.dynamic_size ? " (any size)" : ""} · ${info.provider}`;
  } catch (err) {
    $("model").textContent = "model info unavailable";
  }
  P2PDraw.ready(size);
}
init();
