/* cropdoc offline page: the model runs here, in the browser, with onnxruntime-web.
 *
 * config.json (written by `cropdoc export --format web`) holds everything Python would
 * use: classes, preprocessing, temperature, the OOD score and threshold, the disease
 * table. A photo is decoded without colour conversion (Python ignores ICC profiles too),
 * preprocessed by preprocess.js exactly as Python does, and scored as the Python predictor
 * scores it: calibrated softmax of logits / T, and the bundle's OOD score. The card is the
 * one `cropdoc serve` shows. window.cropdoc exposes the last result (tests read it).
 */
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const SEVERITY = { none: "healthy", moderate: "moderate risk", high: "high risk", unknown: "severity unknown" };
  // The advice lines of cropdoc serve (serve/app.py), so both pages say the same.
  const ADVICE = {
    healthy: "No disease found on this leaf. Keep checking your plants every week.",
    high: "High risk: this disease can spread through a field within days. Start with the first step below today.",
    moderate: "Moderate risk: act early, before it spreads to healthy leaves.",
    unknown: "Ask a local extension officer or plant clinic to confirm before treating.",
  };
  const RETAKE = "The model is not sure about this photo. Retake it: one leaf filling the frame, " +
    "in focus, in daylight without harsh glare or shadows, on a plain background.";
  const MAX_PIXELS = 40000000; // Python's limit (cropdoc.data.images.DEFAULT_MAX_PIXELS)
  const MAX_CANVAS = 16000000;
  const state = {
    config: null, session: null, offlineReady: false, last: null, lastInput: null, error: null,
  };
  window.cropdoc = state;

  function show(which) {
    $("placeholder").style.display = which === "idle" ? "" : "none";
    $("busy").style.display = which === "busy" ? "block" : "none";
    $("result").style.display = which === "result" ? "block" : "none";
    $("error").hidden = which !== "error";
  }

  function showError(message) {
    $("error-text").textContent = " " + message;
    show("error");
  }

  function pct(p) { return (100 * p).toFixed(p >= 0.995 || p < 0.1 ? 1 : 0) + "%"; }

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
    const info = c.diseases[top[0].class];
    const low = top[0].probability < c.low_confidence;
    const advice = low ? RETAKE : (ADVICE[info.healthy ? "healthy" : info.severity] || ADVICE.unknown);
    return {
      ok: true, prediction: top[0], top_k: top, probabilities: probs, logits: logits,
      ood_score: score, abstain: abstain, crop: info.crop, disease: info.disease,
      healthy: info.healthy, pathogen: info.pathogen || null, severity: info.severity,
      symptoms: info.symptoms || null, treatment: info.management, low_confidence: low,
      advice: advice,
    };
  }

  // ------------------------------------------------------------------ card
  function renderBars(top) {
    const bars = $("bars");
    bars.replaceChildren();
    top.slice(0, 3).forEach((t, i) => {
      const bar = document.createElement("div");
      bar.className = "bar" + (i === 0 ? " top" : "");
      const row = document.createElement("div");
      row.className = "row";
      const name = document.createElement("span");
      name.textContent = t.label;
      const value = document.createElement("span");
      value.textContent = pct(t.probability);
      row.append(name, value);
      const track = document.createElement("div");
      track.className = "track";
      const fill = document.createElement("div");
      fill.className = "fill";
      track.append(fill);
      bar.append(row, track);
      bars.append(bar);
      requestAnimationFrame(() => { fill.style.width = Math.max(1, 100 * t.probability) + "%"; });
    });
  }

  function render(r) {
    const known = !r.abstain;
    $("abstain").hidden = known;
    $("pred-crop").textContent = known ? r.crop || "" : "";
    $("pred-label").textContent = !known ? "Not recognised"
      : r.healthy ? "Healthy leaf" : (r.disease || r.prediction.label);
    $("pred-confidence").textContent = pct(r.prediction.probability) + " confident";
    const sev = $("pred-severity");
    sev.textContent = SEVERITY[r.severity] || r.severity;
    sev.className = "badge " + (r.severity || "");
    sev.style.display = known ? "" : "none";
    $("pathogen").textContent = known ? r.pathogen || "" : "";
    renderBars(r.top_k);
    $("symptoms").textContent = r.symptoms || "";
    $("symptoms-wrap").style.display = known && r.symptoms ? "" : "none";
    const list = $("treatment");
    list.replaceChildren();
    (known ? r.treatment || [] : []).forEach((step) => {
      const li = document.createElement("li");
      li.textContent = step;
      list.append(li);
    });
    list.parentElement.style.display = known ? "" : "none";
    $("advice").textContent = r.advice || "";
    $("advice").className = r.healthy ? "" : (r.severity || "");
    $("advice").style.display = known && r.advice && !r.low_confidence ? "" : "none";
    $("low-confidence").hidden = !known || !r.low_confidence;
    $("low-text").textContent = r.low_confidence ? " " + r.advice : "";
    show("result");
    if (window.innerWidth < 780) $("result-h").scrollIntoView({ behavior: "smooth", block: "start" });
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
    if (width * height > MAX_PIXELS) {
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
    $("preview").src = URL.createObjectURL(file);
    $("preview-wrap").style.display = "block";
    const size = file.size < 1048576 ? Math.max(1, Math.round(file.size / 1024)) + " KB"
      : (file.size / 1048576).toFixed(1) + " MB";
    $("filename").textContent = file.name + " · " + size;
    show("busy");
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

  for (const id of ["file-input", "camera-input"]) {
    $(id).addEventListener("change", (e) => { onFile(e.target.files[0]); e.target.value = ""; });
  }
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault(); drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => onFile(e.dataTransfer.files[0]));
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());

  show("idle");
  state.ready = loadModel().catch((e) => {
    state.error = e.message;
    $("model-info").textContent = "The model could not be loaded (" + e.message + ").";
    throw new Error("the model could not be loaded (" + e.message + ")");
  });
  state.ready.catch(() => {});
  registerWorker();
})();
