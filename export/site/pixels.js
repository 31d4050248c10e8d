// Pre- and post-processing of a p2p model in the browser, driven by model.json's "rules"
// (written by p2p/runtime/processing.py from the code p2p.runtime.images runs), so the page
// feeds the model exactly what p2p-translate feeds it and writes back the same pixels:
// split of 2:1 A|B pairs, Pillow's bicubic resize (ported below, integer arithmetic and all),
// reflect/edge padding, uint8 <-> float32 with float32 rounding, round-half-even, Lab.
"use strict";

// --- Pillow's resampling (src/libImaging/Resample.c), bicubic with a = -0.5 -----------------

const PRECISION_BITS = 32 - 8 - 2;

function bicubic(x) {
  const a = -0.5;
  if (x < 0) x = -x;
  if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
  return 0;
}

// precompute_coeffs: for each output index, the first input index, the count, the weights.
function coeffs(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = 2 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < xmax; x++) {
      const w = bicubic((x + xmin - center + 0.5) * ss);
      kk[xx * ksize + x] = w;
      ww += w;
    }
    if (ww !== 0) for (let x = 0; x < xmax; x++) kk[xx * ksize + x] /= ww;
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

// normalize_coeffs_8bpc: weights as 22-bit fixed point, rounded away from zero.
function fixed(kk) {
  const out = new Float64Array(kk.length);
  const one = 2 ** PRECISION_BITS;
  for (let i = 0; i < kk.length; i++) {
    out[i] = kk[i] < 0 ? Math.trunc(-0.5 + kk[i] * one) : Math.trunc(0.5 + kk[i] * one);
  }
  return out;
}

function clip8(ss) {
  if (ss >= 2 ** (PRECISION_BITS + 8)) return 255;
  if (ss <= 0) return 0;
  return Math.floor(ss / 2 ** PRECISION_BITS);
}

// One pass along x (axis 0) or y (axis 1) of an interleaved (h, w, c) image.
function pass(src, w, h, c, outLen, axis, u8) {
  const inLen = axis === 0 ? w : h;
  const { ksize, bounds, kk } = coeffs(inLen, outLen);
  const k = u8 ? fixed(kk) : kk;
  const [ow, oh] = axis === 0 ? [outLen, h] : [w, outLen];
  const dst = u8 ? new Uint8ClampedArray(ow * oh * c) : new Float32Array(ow * oh * c);
  const half = 2 ** (PRECISION_BITS - 1);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      const o = axis === 0 ? x : y;
      const min = bounds[2 * o], n = bounds[2 * o + 1], kb = o * ksize;
      for (let ch = 0; ch < c; ch++) {
        let ss = u8 ? half : 0;
        for (let i = 0; i < n; i++) {
          const idx = axis === 0 ? (y * w + min + i) * c + ch : ((min + i) * w + x) * c + ch;
          ss += src[idx] * k[kb + i];
        }
        dst[(y * ow + x) * c + ch] = u8 ? clip8(ss) : ss;
      }
    }
  }
  return dst;
}

// Image.resize((ow, oh), BICUBIC) of an interleaved uint8 (u8) or float32 (mode F) image;
// the pass order is the Python side's Pillow's (rules.resize.vertical_first, see processing.py).
export function resize(src, w, h, c, ow, oh, u8, verticalFirst) {
  if (w === ow && h === oh) return src;
  let img = src;
  if (verticalFirst && h - oh > 0 && h - oh > (w - ow) * 2) {
    if (oh !== h) img = pass(img, w, h, c, oh, 1, u8);
    if (ow !== w) img = pass(img, w, oh, c, ow, 0, u8);
  } else {
    if (ow !== w) img = pass(img, w, h, c, ow, 0, u8);
    if (oh !== h) img = pass(img, ow, h, c, oh, 1, u8);
  }
  return img;
}

// --- float32 arithmetic as numpy does it ----------------------------------------------------

const f32 = Math.fround;

// np.rint + clip to 0..255 + astype(uint8) in one step: storing a number into a
// Uint8ClampedArray rounds half to even and clamps (ECMAScript ToUint8Clamp). NaN would
// store as 0, so callers check finiteness first.

const F16 = new Float32Array(1), U32 = new Uint32Array(F16.buffer);

export function toHalf(v) {  // float32 -> IEEE binary16 bits, round to nearest even
  F16[0] = v;
  const x = U32[0], sign = (x >>> 16) & 0x8000;
  let e = ((x >>> 23) & 0xff) - 127 + 15, m = x & 0x7fffff;
  if (e >= 31) return sign | 0x7c00 | (((x >>> 23) & 0xff) === 0xff && m ? 0x200 : 0);
  if (e <= 0) {
    if (e < -10) return sign;
    m |= 0x800000;
    const shift = 14 - e, half = 1 << (shift - 1);
    let r = m >>> shift;
    const rest = m & ((1 << shift) - 1);
    if (rest > half || (rest === half && (r & 1))) r++;
    return sign | r;
  }
  let r = (e << 10) | (m >>> 13);
  const rest = m & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && (r & 1))) r++;
  return sign | r;
}

export function fromHalf(h) {
  const s = h & 0x8000 ? -1 : 1, e = (h >>> 10) & 0x1f, m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

// --- Lab (runtime/color.py) -----------------------------------------------------------------

function rgbToLab(r, g, b, lab) {
  const lin = (v) => (v > 0.04045 ? ((v + 0.055) / 1.055) ** 2.4 : v / 12.92);
  const [R, G, B] = [lin(r), lin(g), lin(b)];
  const M = lab.rgb_to_xyz, W = lab.white;
  const f = [0, 1, 2].map((i) => {
    const t = (R * M[i][0] + G * M[i][1] + B * M[i][2]) / W[i];
    return t > 0.008856 ? Math.cbrt(t) : 7.787 * t + 16 / 116;
  });
  return [116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])];
}

function labToRgb(L, a, b, lab) {
  const fy = (L + 16) / 116;
  const f = [fy + a / 500, fy, fy - b / 200];
  const xyz = f.map((v, i) => (v > 0.206893 ? v ** 3 : (v - 16 / 116) / 7.787) * lab.white[i]);
  const Mi = lab.xyz_to_rgb;
  return [0, 1, 2].map((i) => {
    const v = Math.max(0, xyz[0] * Mi[i][0] + xyz[1] * Mi[i][1] + xyz[2] * Mi[i][2]);
    const s = v > 0.0031308 ? 1.055 * v ** (1 / 2.4) - 0.055 : 12.92 * v;
    return Math.min(1, Math.max(0, s));
  });
}

// (H, W) L of an interleaved RGBA/RGB uint8 image, scaled to the model's [-1, 1], float32.
function modelL(rgb, w, h, c, lab) {
  const out = new Float32Array(w * h);
  for (let p = 0; p < w * h; p++) {
    const [L] = rgbToLab(f32(rgb[p * c] / 255), f32(rgb[p * c + 1] / 255),
                         f32(rgb[p * c + 2] / 255), lab);
    out[p] = L / lab.L_scale - 1;
  }
  return out;
}

// --- the steps ------------------------------------------------------------------------------

// Which half of a (w, h) image feeds the model: "left", "right" or null (images.choose_half).
export function chooseHalf(w, h, rules) {
  const s = rules.split;
  return !s.never && w === s.aspect * h ? s.input_half : null;
}

// RGBA ImageData -> { tensor data (C, H, W) float32, dims, and what the way back needs }.
export function prepare(image, rules) {
  const half = chooseHalf(image.width, image.height, rules);
  const w0 = half ? Math.floor(image.width / 2) : image.width, h0 = image.height;
  const x0 = half === "right" ? image.width - w0 : 0;
  const rgb = new Uint8ClampedArray(w0 * h0 * 3);  // the (split) image, RGB, alpha dropped
  for (let y = 0; y < h0; y++) {
    for (let x = 0; x < w0; x++) {
      const i = (y * image.width + x0 + x) * 4, o = (y * w0 + x) * 3;
      rgb[o] = image.data[i]; rgb[o + 1] = image.data[i + 1]; rgb[o + 2] = image.data[i + 2];
    }
  }
  const size = rules.resize.size;
  const [w, h] = size ? size : [w0, h0];
  const vfirst = rules.resize.vertical_first;
  const img = resize(rgb, w0, h0, 3, w, h, true, vfirst);
  const inp = rules.input;
  let planes;  // (C, h, w) float32
  let lightness = null;
  if (inp.color_space === "lab") {
    lightness = modelL(rgb, w0, h0, 3, rules.lab);
    planes = img === rgb ? lightness.slice() : modelL(img, w, h, 3, rules.lab);
  } else {
    planes = new Float32Array(inp.channels * w * h);
    const divisor = f32(inp.divisor), offset = f32(inp.offset);
    const [kr, kg, kb] = inp.grey_fixed16;
    for (let p = 0; p < w * h; p++) {
      if (inp.channels === 1) {
        const l = (img[3 * p] * kr + img[3 * p + 1] * kg + img[3 * p + 2] * kb + 0x8000) >>> 16;
        planes[p] = f32(f32(l / divisor) + offset);
      } else {
        for (let ch = 0; ch < 3; ch++) planes[ch * w * h + p] = f32(f32(img[3 * p + ch] / divisor) + offset);
      }
    }
  }
  const m = rules.pad.multiple;
  const [pw, ph] = [w + (-w % m + m) % m, h + (-h % m + m) % m];
  const data = pw === w && ph === h ? planes : pad(planes, inp.channels, w, h, pw, ph);
  return { data, dims: [1, inp.channels, ph, pw], size: [w0, h0], model: [w, h], half,
           lightness, modelL: inp.color_space === "lab" ? planes : null };
}

// np.pad(mode="reflect") at the bottom and right; "edge" when the image is too small.
function pad(planes, c, w, h, pw, ph) {
  const reflect = ph - h < h && pw - w < w;
  const at = (i, n) => (i < n ? i : reflect ? 2 * (n - 1) - i : n - 1);
  const out = new Float32Array(c * pw * ph);
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < ph; y++) {
      for (let x = 0; x < pw; x++) {
        out[(ch * ph + y) * pw + x] = planes[(ch * h + at(y, h)) * w + at(x, w)];
      }
    }
  }
  return out;
}

// The model's (C, H, W) output -> RGBA ImageData at the input's size (images.to_image).
export function finish(y, prep, rules) {
  for (let i = 0; i < y.length; i++) {  // no wrong picture from a broken model
    if (!Number.isFinite(y[i])) throw new Error("the model's output holds NaN or Inf");
  }
  const [, , ph, pw] = prep.dims;
  const [w, h] = prep.model, [W, H] = prep.size;
  const out = rules.output;
  const rgba = new Uint8ClampedArray(W * H * 4);
  if (rules.input.color_space === "lab") {
    let ab = new Float32Array(w * h * 2);  // cropped, interleaved (h, w, 2)
    for (let yy = 0; yy < h; yy++) {
      for (let x = 0; x < w; x++) {
        for (let ch = 0; ch < 2; ch++) ab[(yy * w + x) * 2 + ch] = y[(ch * ph + yy) * pw + x];
      }
    }
    ab = resize(ab, w, h, 2, W, H, false, rules.resize.vertical_first);
    const lab = rules.lab;
    for (let p = 0; p < W * H; p++) {
      const L = f32(f32(prep.lightness[p] + 1) * lab.L_scale);
      const rgb = labToRgb(L, f32(ab[2 * p] * lab.ab_scale), f32(ab[2 * p + 1] * lab.ab_scale), lab);
      for (let ch = 0; ch < 3; ch++) rgba[4 * p + ch] = rgb[ch] * 255;  // rint, clipped
      rgba[4 * p + 3] = 255;
    }
    return new ImageData(rgba, W, H);
  }
  const c = out.channels === 1 ? 1 : 3;
  const scale = f32(out.scale), offset = f32(out.offset);
  let u8 = new Uint8ClampedArray(w * h * c);
  for (let yy = 0; yy < h; yy++) {
    for (let x = 0; x < w; x++) {
      for (let ch = 0; ch < c; ch++) {
        u8[(yy * w + x) * c + ch] = f32(f32(y[(ch * ph + yy) * pw + x] - offset) * scale);
      }
    }
  }
  u8 = resize(u8, w, h, c, W, H, true, rules.resize.vertical_first);
  for (let p = 0; p < W * H; p++) {
    for (let ch = 0; ch < 3; ch++) rgba[4 * p + ch] = u8[p * c + (c === 1 ? 0 : ch)];
    rgba[4 * p + 3] = 255;
  }
  return new ImageData(rgba, W, H);
}
