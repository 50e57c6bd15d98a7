/* cropdoc: the bundle's preprocessing in the browser, bit for bit as Python does it.
 *
 * Python decodes a JPEG to uint8 RGB, resizes the shorter side with torchvision's
 * antialiased bilinear filter on uint8 (PyTorch's fixed-point kernel, the one Pillow-SIMD
 * uses: int16 weights, rounding, a horizontal pass then a vertical pass, each rounded back
 * to uint8), centre-crops and normalises. A canvas resize filters differently, so this
 * file does the resize itself with the same weights and integer arithmetic; on the same
 * decoded pixels the model input is identical (tests/test_web_export.py checks it).
 * Plain script: defines CropdocPreprocess in a page, module.exports under Node.
 */
"use strict";
(function (root) {
  // PyTorch's _compute_indices_min_size_weights_aa + _compute_index_ranges_int16_weights.
  function weights(inSize, outSize) {
    const scale = inSize / outSize;
    const support = scale >= 1.0 ? scale : 1.0;
    const invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
    const maxSize = Math.ceil(support) * 2 + 1;
    const starts = new Int32Array(outSize);
    const sizes = new Int32Array(outSize);
    const w = new Float64Array(outSize * maxSize);
    let wtMax = 0.0;
    for (let i = 0; i < outSize; i++) {
      const center = scale * (i + 0.5);
      const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
      let xsize = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
      xsize = Math.min(Math.max(xsize, 0), maxSize);
      let total = 0.0;
      for (let j = 0; j < xsize; j++) {
        const x = Math.abs((j + xmin - center + 0.5) * invscale);
        const v = x < 1.0 ? 1.0 - x : 0.0;
        w[i * maxSize + j] = v;
        total += v;
      }
      if (total !== 0.0) {
        for (let j = 0; j < xsize; j++) {
          w[i * maxSize + j] /= total;
          wtMax = Math.max(wtMax, w[i * maxSize + j]);
        }
      }
      starts[i] = xmin;
      sizes[i] = xsize;
    }
    let precision = 0;
    for (; precision < 22; precision++) {
      if (Math.trunc(0.5 + wtMax * 2 ** (precision + 1)) >= 1 << 15) break;
    }
    const q = new Int32Array(outSize * maxSize);
    for (let k = 0; k < q.length; k++) {
      const v = w[k] * 2 ** precision;
      q[k] = v < 0 ? Math.trunc(-0.5 + v) : Math.trunc(0.5 + v);
    }
    return { starts, sizes, q, maxSize, precision };
  }

  // One pass along an axis of an interleaved uint8 image (stride in elements per step).
  function pass(src, width, height, channels, outSize, horizontal) {
    const inSize = horizontal ? width : height;
    const { starts, sizes, q, maxSize, precision } = weights(inSize, outSize);
    const outW = horizontal ? outSize : width;
    const outH = horizontal ? height : outSize;
    const dst = new Uint8Array(outW * outH * channels);
    const half = 1 << (precision - 1);
    const step = horizontal ? channels : width * channels;
    for (let y = 0; y < outH; y++) {
      for (let x = 0; x < outW; x++) {
        const i = horizontal ? x : y;
        const base = horizontal ? (y * width + starts[i]) * channels
          : (starts[i] * width + x) * channels;
        for (let c = 0; c < channels; c++) {
          let acc = half;
          let p = base + c;
          for (let j = 0; j < sizes[i]; j++, p += step) acc += q[i * maxSize + j] * src[p];
          acc >>= precision;
          dst[(y * outW + x) * channels + c] = acc < 0 ? 0 : acc > 255 ? 255 : acc;
        }
      }
    }
    return dst;
  }

  // torchvision's _compute_resized_output_size for an int size: the shorter side becomes
  // `size`, the longer int(size * long / short).
  function resizedSize(width, height, size) {
    if (width <= height) return [size, Math.trunc((size * height) / width)];
    return [Math.trunc((size * width) / height), size];
  }

  // Python's round() on halves: to the even neighbour (torchvision's crop anchor).
  function roundHalfEven(x) {
    const f = Math.floor(x);
    const d = x - f;
    if (d > 0.5) return f + 1;
    if (d < 0.5) return f;
    return f % 2 === 0 ? f : f + 1;
  }

  /* Resize (shorter side to p.resize_size), centre-crop p.image_size, normalise.
   * rgba: interleaved uint8 pixels with `channels` values each (4 for canvas data, 3 for
   * RGB); returns a Float32Array (3, S, S) in channel-major order, the model input. */
  function preprocess(rgba, width, height, channels, p) {
    const [newW, newH] = resizedSize(width, height, p.resize_size);
    let img = rgba instanceof Uint8Array ? rgba : new Uint8Array(rgba.buffer || rgba);
    let w = width;
    let h = height;
    if (newW !== w) { img = pass(img, w, h, channels, newW, true); w = newW; }
    if (newH !== h) { img = pass(img, w, h, channels, newH, false); h = newH; }
    const s = p.image_size;
    const top = roundHalfEven((h - s) / 2.0);
    const left = roundHalfEven((w - s) / 2.0);
    const out = new Float32Array(3 * s * s);
    const f = Math.fround;
    const inv255 = f(1 / 255);
    for (let c = 0; c < 3; c++) {
      const mean = f(p.mean[c]);
      const std = f(p.std[c]);
      for (let y = 0; y < s; y++) {
        for (let x = 0; x < s; x++) {
          const v = img[((y + top) * w + (x + left)) * channels + c];
          // float32 at every step, as torch computes x * (1/255), then (x - mean) / std.
          out[(c * s + y) * s + x] = f(f(f(v * inv255) - mean) / std);
        }
      }
    }
    return out;
  }

  const api = { preprocess, resizedSize, weights };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.CropdocPreprocess = api;
})(typeof self !== "undefined" ? self : this);
