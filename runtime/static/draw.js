// p2p drawing canvas, shared by p2p-serve's page and the static page of p2p-export --web:
// the model's label palette, pencil / eraser / rectangle, undo, clear and image upload.
// The page's own script sets P2PDraw.translate(source) (called after each change; source is
// the uploaded image's ImageData, whole, or undefined for the canvas) and P2PDraw.state.info
// (direction, color_space, ...) before it calls P2PDraw.ready(size).
// Plain browser JavaScript, no libraries and no network.
"use strict";

const P2PDraw = (() => {

// Facade label colours of the CMP Facade Database as they appear in pix2pix's facades
// dataset. Derived, not remembered: the flat pixels (5x5 neighbourhood spread < 24, away
// from JPEG ringing at label edges) of the RIGHT (label) halves of all 400
// facades/train/*.jpg were clustered into 12 colours (peak picking on an 8-level
// histogram, then 10 rounds of k-medians). The 12 clusters fall on one blue -> cyan ->
// yellow -> red colour map, whose order is the CMP class order below. Checks that agree:
// facade 42% of pixels, background 29%, window 10%, each present in all 200 images
// sampled; door sits lowest (mean height 0.72 of the image), shop next (0.64).
const PALETTES = {
  facades: {
    fill: "background",
    colours: [
      ["background", [0, 0, 222]],
      ["facade", [0, 48, 255]],
      ["window", [0, 128, 255]],
      ["door", [1, 207, 255]],
      ["cornice", [32, 255, 224]],
      ["sill", [112, 254, 142]],
      ["balcony", [192, 255, 63]],
      ["blind", [255, 240, 1]],
      ["deco", [255, 159, 0]],
      ["molding", [255, 80, 0]],
      ["pillar", [253, 0, 0]],
      ["shop", [174, 0, 1]],
    ],
  },
  // Edges and sketches (edges2shoes, edges2cats): black strokes on white.
  sketch: { fill: "paper", colours: [["ink", [0, 0, 0]], ["paper", [255, 255, 255]]] },
};
const UNDO_LIMIT = 50;

const $ = (id) => document.getElementById(id);
const canvas = $("input");
const ctx = canvas.getContext("2d", { willReadFrequently: true });
const output = $("output");
const download = $("download");
const state = {
  tool: "pencil", palette: "facades", colour: "facade", size: 6,
  undo: [], drawing: false, last: null, start: null, snapshot: null,
  busy: false, again: false, url: null, info: null,
};

function rgb(name) {
  const found = PALETTES[state.palette].colours.find(([n]) => n === name);
  const [r, g, b] = found ? found[1] : [0, 0, 0];
  return `rgb(${r},${g},${b})`;
}

function setStatus(text, error = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", error);
}

// --- palette and tools ---------------------------------------------------------------------

function buildPalette() {
  const box = $("palette");
  box.replaceChildren();
  for (const [name, [r, g, b]] of PALETTES[state.palette].colours) {
    const sw = document.createElement("button");
    sw.type = "button";
    sw.className = "swatch" + (name === state.colour ? " active" : "");
    sw.dataset.colour = name;
    sw.title = `${name}: rgb(${r}, ${g}, ${b})`;
    const chip = document.createElement("span");
    chip.style.background = `rgb(${r},${g},${b})`;
    sw.append(chip, name);
    sw.addEventListener("click", () => selectColour(name));
    box.append(sw);
  }
}

function selectColour(name) {
  state.colour = name;
  for (const sw of document.querySelectorAll(".swatch")) {
    sw.classList.toggle("active", sw.dataset.colour === name);
  }
  if (state.tool === "eraser") selectTool("pencil");
}

function selectTool(tool) {
  state.tool = tool;
  for (const b of document.querySelectorAll("[data-tool]")) {
    b.classList.toggle("active", b.dataset.tool === tool);
  }
}

function selectPalette(name) {
  state.palette = name;
  const colours = PALETTES[name].colours.map(([n]) => n);
  state.colour = colours.find((n) => n !== PALETTES[name].fill) || colours[0];
  buildPalette();
  clearCanvas();  // a facade drawing makes no sense to a sketch model: start afresh (undoable)
}

// --- drawing -------------------------------------------------------------------------------

function pushUndo() {
  state.undo.push(ctx.getImageData(0, 0, canvas.width, canvas.height));
  if (state.undo.length > UNDO_LIMIT) state.undo.shift();
}

function undo() {
  const prev = state.undo.pop();
  if (!prev) return;
  ctx.putImageData(prev, 0, 0);
  if ($("auto").checked) api.translate();
}

function fill() {
  ctx.fillStyle = rgb(PALETTES[state.palette].fill);
  ctx.fillRect(0, 0, canvas.width, canvas.height);
}

function clearCanvas() {
  pushUndo();
  fill();
  if ($("auto").checked && output.src) api.translate();
}

function point(e) {
  const r = canvas.getBoundingClientRect();
  return [Math.floor((e.clientX - r.left) * canvas.width / r.width),
          Math.floor((e.clientY - r.top) * canvas.height / r.height)];
}

// Square stamps at integer positions, not antialiased strokes: a label map must hold only
// palette colours, and blended edge pixels would be colours the model never saw.
function stamp([x, y]) {
  const s = state.size;
  ctx.fillRect(Math.round(x - s / 2), Math.round(y - s / 2), s, s);
}

function line(a, b) {
  const steps = Math.max(Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]), 1);
  for (let i = 0; i <= steps; i++) {
    stamp([a[0] + (b[0] - a[0]) * i / steps, a[1] + (b[1] - a[1]) * i / steps]);
  }
}

function paintColour() {
  return state.tool === "eraser" ? rgb(PALETTES[state.palette].fill) : rgb(state.colour);
}

function rectangle(a, b) {
  const x0 = Math.max(0, Math.min(a[0], b[0])), y0 = Math.max(0, Math.min(a[1], b[1]));
  const x1 = Math.min(canvas.width, Math.max(a[0], b[0]) + 1);
  const y1 = Math.min(canvas.height, Math.max(a[1], b[1]) + 1);
  ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
}

canvas.addEventListener("pointerdown", (e) => {
  if (e.button !== 0) return;
  canvas.setPointerCapture(e.pointerId);
  pushUndo();
  state.drawing = true;
  const p = point(e);
  ctx.fillStyle = paintColour();
  if (state.tool === "rect") {
    state.start = p;
    state.snapshot = ctx.getImageData(0, 0, canvas.width, canvas.height);
    rectangle(p, p);
  } else {
    stamp(p);
  }
  state.last = p;
});

canvas.addEventListener("pointermove", (e) => {
  if (!state.drawing) return;
  const p = point(e);
  ctx.fillStyle = paintColour();
  if (state.tool === "rect") {
    ctx.putImageData(state.snapshot, 0, 0);  // preview: redraw from before the drag
    rectangle(state.start, p);
  } else {
    line(state.last, p);
  }
  state.last = p;
});

function endStroke() {
  if (!state.drawing) return;
  state.drawing = false;
  state.snapshot = null;
  if ($("auto").checked) api.translate();
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

// --- upload --------------------------------------------------------------------------------

async function upload(file) {
  let bitmap;
  try {
    // The file's own pixels: no colour management, no premultiplication (p2p-translate
    // decodes the bytes as they are).
    bitmap = await createImageBitmap(file, { colorSpaceConversion: "none",
                                             premultiplyAlpha: "none" });
  } catch (err) {
    setStatus(`${file.name}: not an image this browser can read`, true);
    return;
  }
  const whole = new OffscreenCanvas(bitmap.width, bitmap.height).getContext("2d");
  whole.drawImage(bitmap, 0, 0);
  const source = whole.getImageData(0, 0, bitmap.width, bitmap.height);
  // A pix2pix pair (exactly 2:1) feeds the model's input half, as p2p-translate does (a
  // colorization model takes whole photos: a 2:1 photo is a panorama, not a pair).
  let [sx, sw] = [0, bitmap.width];
  const info = state.info;
  if (bitmap.width === 2 * bitmap.height && info && info.color_space !== "lab") {
    sw = bitmap.width / 2;
    sx = info.direction === "AtoB" ? 0 : sw;
  }
  pushUndo();
  ctx.drawImage(bitmap, sx, 0, sw, bitmap.height, 0, 0, canvas.width, canvas.height);
  bitmap.close();
  api.translate(source);
}

// --- wiring --------------------------------------------------------------------------------

for (const b of document.querySelectorAll("[data-tool]")) {
  b.addEventListener("click", () => selectTool(b.dataset.tool));
}
$("size").addEventListener("input", (e) => { state.size = Number(e.target.value); });
$("palette-name").addEventListener("change", (e) => selectPalette(e.target.value));
$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", clearCanvas);
$("translate").addEventListener("click", () => api.translate());
$("upload").addEventListener("change", (e) => {
  if (e.target.files.length) upload(e.target.files[0]);
  e.target.value = "";
});
document.addEventListener("keydown", (e) => {
  if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
  if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); }
  else if (e.key === "p") selectTool("pencil");
  else if (e.key === "e") selectTool("eraser");
  else if (e.key === "r") selectTool("rect");
});

// The canvas at the model's size (fixed-size models: nothing is resampled; dynamic: `size`),
// drawn with `palette` (a PALETTES name: the model's labels) when the page knows it.
function ready(size, palette) {
  if (palette && PALETTES[palette] && palette !== state.palette) {
    state.palette = palette;
    $("palette-name").value = palette;
    const colours = PALETTES[palette].colours.map(([n]) => n);
    state.colour = colours.find((n) => n !== PALETTES[palette].fill) || colours[0];
  }
  buildPalette();
  if (size && size !== canvas.width) canvas.width = canvas.height = size;
  fill();
  document.body.dataset.ready = "1";  // for tests and scripts: the canvas has its final size
}

const api = { state, canvas, ctx, output, download, setStatus, ready,
              translate: () => {} };
return api;
})();
