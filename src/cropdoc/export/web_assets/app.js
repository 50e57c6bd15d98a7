/* cropdoc offline page: the model runs here, in the browser, with onnxruntime-web.
 *
 * config.json (written by `cropdoc export --format web`) holds everything Python would
 * use: classes, preprocessing, temperature, the OOD score and threshold, the disease
 * table. A photo is decoded without colour conversion (Python ignores ICC profiles too),
 * preprocessed by preprocess.js exactly as Python does, and scored as the Python predictor
 * scores it: calibrated softmax of logits / T, and the bundle's OOD score. The card is
 * `cropdoc serve`'s (card.js renders both), with serve's advice texts (config.advice).
 * window.cropdoc exposes the last result (tests read it).
 */
"use strict";
(function () {
  const { $, showError, showPhoto, render, wireInputs } = CropdocCard;
  const MAX_CANVAS = 16000000;
  const state = {
    config: null, session: null, offlineReady: false, last: null, lastInput: null, error: null,
  };
  window.cropdoc = state;

  function diagnose(logits, features) {
    const c = state.config;
    const probs = CropdocScores.softmax(logits, c.temperature);
    // Stable sort on -p: ties keep class order, as the Python predictor's argsort.
    const order = probs.map((p, i) => i).sort((a, b) => probs[b] - probs[a]);
    const top = order.slice(0, Math.min(c.top_k, probs.length)).map((i) => ({
      index: i, class: c.classes[i], label: c.labels[i], probability: probs[i], logit: logits[i],
    }));
    const score = CropdocScores.oodScore(c.ood, logits, probs, features);
    const abstain = score !== null && score > c.ood.threshold;
    const low = top[0].probability < c.low_confidence;
    const base = {
      ok: true, prediction: top[0], top_k: top, probabilities: probs, logits: logits,
      ood_score: score, abstain: abstain, low_confidence: low,
    };
    // As cropdoc serve answers: no crop, disease or treatment when abstaining.
    if (abstain) return Object.assign(base, { advice: c.advice.not_recognised });
    const info = c.diseases[top[0].class];
    const severity = c.advice.severity;
    const advice = low ? c.advice.retake
      : (severity[info.healthy ? "healthy" : info.severity] || severity.unknown);
    return Object.assign(base, {
      crop: info.crop, disease: info.disease, healthy: info.healthy,
      pathogen: info.pathogen || null, severity: info.severity, symptoms: info.symptoms || null,
      treatment: info.management, advice: advice,
    });
  }

  // ------------------------------------------------------------------ photo -> input
  async function bitmapOf(file, size) {
    const options = { imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none" };
    if (size) Object.assign(options, { resizeWidth: size[0], resizeHeight: size[1], resizeQuality: "high" });
    try {
      return await createImageBitmap(file, options);
    } catch (e) {
      if (!(e instanceof TypeError)) throw e;
      // Older browsers do not know "from-image" (they apply EXIF orientation anyway).
      delete options.imageOrientation;
      return await createImageBitmap(file, options);
    }
  }

  async function pixelsOf(file) {
    let bitmap;
    try {
      bitmap = await bitmapOf(file);
    } catch (e) {
      throw new Error("not an image this browser can read. Try a JPEG or PNG photo of a leaf");
    }
    let { width, height } = bitmap;
    if (width * height > state.config.max_pixels) { // Python's limit, as exported
      bitmap.close();
      throw new Error("the photo has too many pixels (" + width + " × " + height + "). Send a smaller one");
    }
    if (width * height > MAX_CANVAS) {
      // Phones cap canvas size (iOS: 16.7 MP): the browser downscales such a photo first,
      // so it differs slightly from Python's resize of the original; smaller ones do not.
      const f = Math.sqrt(MAX_CANVAS / (width * height));
      [width, height] = [Math.floor(width * f), Math.floor(height * f)];
      bitmap.close();
      bitmap = await bitmapOf(file, [width, height]);
    }
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.fillStyle = "#fff"; // transparent pixels become white, as in Python
    ctx.fillRect(0, 0, width, height);
    ctx.drawImage(bitmap, 0, 0);
    bitmap.close();
    return { data: ctx.getImageData(0, 0, width, height).data, width, height };
  }

  async function predictFile(file) {
    const c = state.config;
    const t0 = performance.now();
    const px = await pixelsOf(file);
    const t1 = performance.now();
    // The photo is downscaled here, in the browser, exactly as Python resizes it.
    const input = CropdocPreprocess.preprocess(px.data, px.width, px.height, 4, c.preprocessing);
    const s = c.preprocessing.image_size;
    const t2 = performance.now();
    const feeds = { [c.model.input]: new ort.Tensor("float32", input, [1, 3, s, s]) };
    const outputs = await state.session.run(feeds);
    const t3 = performance.now();
    const features = c.model.features ? Array.from(outputs[c.model.features].data) : null;
    const result = diagnose(Array.from(outputs[c.model.output].data), features);
    result.timing_ms = { decode: t1 - t0, preprocess: t2 - t1, inference: t3 - t2 };
    result.size = [px.width, px.height];
    result.features = features;
    state.lastInput = input;
    return result;
  }

  async function onFile(file) {
    if (!file) return;
    showPhoto(file);
    try {
      await state.ready;
      const r = await predictFile(file);
      state.last = r;
      render(r);
    } catch (e) {
      state.last = { ok: false, error: e.message };
      showError(e.message + ".");
    }
  }

  // ------------------------------------------------------------------ start-up
  async function loadModel() {
    const response = await fetch("config.json");
    if (!response.ok) throw new Error("config.json: " + response.status);
    const c = await response.json();
    state.config = c;
    // An absolute URL: onnxruntime-web imports its loader from here (a bare "ort/" would be
    // taken for a package name).
    ort.env.wasm.wasmPaths = new URL("ort/", location.href).href;
    // Threads need cross-origin isolation, which a plain static server does not give.
    ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
    state.session = await ort.InferenceSession.create(c.model.file, { executionProviders: ["wasm"] });
    const f1 = c.metrics && c.metrics.test && c.metrics.test.macro_f1;
    $("model-info").textContent = "Model: " + c.arch + " · " + c.classes.length + " classes · " +
      c.model.kind + (typeof f1 === "number" ? " · test macro-F1 " + f1.toFixed(3) : "") + ".";
  }

  function registerWorker() {
    const status = $("offline-status");
    if (!("serviceWorker" in navigator) || !window.isSecureContext) {
      status.textContent = " · open this page over https (or localhost) to use it offline";
      return;
    }
    navigator.serviceWorker.register("sw.js")
      .then(() => navigator.serviceWorker.ready)
      .then(() => {
        state.offlineReady = true;
        status.textContent = " · ready offline";
        status.className = "ready";
      })
      .catch((e) => { status.textContent = " · offline use unavailable (" + e.message + ")"; });
  }

  wireInputs(onFile);
  state.ready = loadModel().catch((e) => {
    state.error = e.message;
    $("model-info").textContent = "The model could not be loaded (" + e.message + ").";
    throw new Error("the model could not be loaded (" + e.message + ")");
  });
  state.ready.catch(() => {});
  registerWorker();
})();
