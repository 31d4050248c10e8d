// The p2p page's Web Worker: loads model.json and model.onnx, runs onnxruntime-web, and does
// the pre/post-processing (pixels.js), so the page's drawing never waits for the model.
//
//   -> {type: "init", threads, backend}        <- {type: "ready", info} | {type: "error"}
//   -> {type: "translate", id, width, height, data (RGBA bytes, transferred)}
//   <- {type: "result", id, width, height, data, ms: {pre, run, post, total}} | {type: "error", id}
import { prepare, finish, toHalf, fromHalf } from "./pixels.js";

let ort = null, session = null, doc = null;

async function hasAdapter() {
  try {
    return Boolean(self.navigator.gpu && await self.navigator.gpu.requestAdapter());
  } catch (err) {
    return false;
  }
}

// WebGPU where the browser offers an adapter (and the site carries its runtime), else WASM
// with as many threads as cross-origin isolation allows (SharedArrayBuffer needs it).
async function open(want, threads) {
  const isolated = self.crossOriginIsolated === true;
  const cores = self.navigator.hardwareConcurrency || 1;
  const maxThreads = isolated ? cores : 1;
  const nThreads = Math.max(1, Math.min(threads || maxThreads, maxThreads));
  let note = isolated ? "" : "not cross-origin isolated: one WASM thread";
  const bytes = await (await fetch(doc.model.file)).arrayBuffer();
  if (want !== "wasm" && doc.webgpu) {
    if (await hasAdapter()) {
      try {
        ort = await import("./ort/ort.webgpu.min.mjs");
        ort.env.wasm.numThreads = nThreads;
        session = await ort.InferenceSession.create(bytes, { executionProviders: ["webgpu"] });
        return { backend: "webgpu", threads: nThreads, isolated, note };
      } catch (err) {
        note = `WebGPU failed (${err.message || err}); running on WASM`;
        ort = session = null;
      }
    } else {
      note = [note, "no WebGPU adapter: running on WASM"].filter(Boolean).join("; ");
    }
  } else if (want !== "wasm") {
    note = [note, "this site carries no WebGPU runtime: running on WASM"].filter(Boolean).join("; ");
  }
  ort = await import("./ort/ort.wasm.min.mjs");
  ort.env.wasm.numThreads = nThreads;
  session = await ort.InferenceSession.create(bytes, {
    executionProviders: ["wasm"], graphOptimizationLevel: "all" });
  return { backend: "wasm", threads: nThreads, isolated, note };
}

async function run(msg) {
  const t0 = performance.now();
  const image = new ImageData(new Uint8ClampedArray(msg.data), msg.width, msg.height);
  const meta = doc.metadata, rules = doc.rules;
  const prep = prepare(image, rules);
  const half = rules.input.dtype === "float16";
  const input = half
    ? new ort.Tensor("float16", Uint16Array.from(prep.data, toHalf), prep.dims)
    : new ort.Tensor("float32", prep.data, prep.dims);
  const t1 = performance.now();
  const outputs = await session.run({ [meta.input_name]: input });
  const t2 = performance.now();
  const out = outputs[meta.output_name];
  let y = out.data;
  if (out.type === "float16") {  // Uint16Array of binary16 bits, or a Float16Array
    y = y instanceof Uint16Array ? Float32Array.from(y, fromHalf) : Float32Array.from(y);
  }
  const result = finish(y, prep, rules);
  input.dispose?.();
  out.dispose?.();
  const t3 = performance.now();
  return { width: result.width, height: result.height, data: result.data.buffer,
           half: prep.half, ms: { pre: t1 - t0, run: t2 - t1, post: t3 - t2, total: t3 - t0 } };
}

self.onmessage = async (e) => {
  const msg = e.data;
  try {
    if (msg.type === "init") {
      doc = await (await fetch("model.json")).json();
      const how = await open(msg.backend, msg.threads);
      self.postMessage({ type: "ready", info: { ...how, metadata: doc.metadata,
                                                rules: doc.rules, ort: doc.ort } });
    } else if (msg.type === "translate") {
      const r = await run(msg);
      self.postMessage({ type: "result", id: msg.id, ...r }, [r.data]);
    }
  } catch (err) {
    self.postMessage({ type: "error", id: msg.id, error: String(err.message || err) });
  }
};
