/* cropdoc leaf page: the result card of `cropdoc serve`'s page and the offline web export.
 *
 * One renderer for both pages, so a diagnosis looks and reads the same wherever it is
 * made. render(r) takes a result as `POST /predict` returns it (prediction, top_k, crop,
 * disease, healthy, pathogen, severity, symptoms, treatment, advice, low_confidence,
 * abstain, explanation); the offline page builds the same object in the browser. An
 * abstaining result shows "Not recognised" with its advice and no diagnosis or treatment.
 */
"use strict";
(function (root) {
  const $ = (id) => document.getElementById(id);
  const SEVERITY = { none: "healthy", moderate: "moderate risk", high: "high risk", unknown: "severity unknown" };

  function show(state) {
    $("placeholder").style.display = state === "idle" ? "" : "none";
    $("busy").style.display = state === "busy" ? "block" : "none";
    $("result").style.display = state === "result" ? "block" : "none";
    $("error").hidden = state !== "error";
  }

  function showError(message) {
    $("error-text").textContent = " " + message;
    show("error");
  }

  function pct(p) { return (100 * p).toFixed(p >= 0.995 || p < 0.1 ? 1 : 0) + "%"; }

  function showHeatmap(r) {
    const e = r && r.explanation;
    $("heatmap-wrap").hidden = !e;
    $("photos").className = e ? "explained" : "";
    if (e) $("heatmap").src = "data:image/png;base64," + e.png_base64;
  }

  // The photo the user chose, with its name and size; the card goes to "busy".
  function showPhoto(file) {
    $("preview").src = URL.createObjectURL(file);
    $("preview-wrap").style.display = "block";
    const size = file.size < 1048576 ? Math.max(1, Math.round(file.size / 1024)) + " KB"
      : (file.size / 1048576).toFixed(1) + " MB";
    $("filename").textContent = file.name + " · " + size;
    showHeatmap(null);
    show("busy");
  }

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
    showHeatmap(r);
    $("treatment").replaceChildren();
    $("not-recognised").hidden = !r.abstain;
    $("diagnosis").hidden = !!r.abstain;
    if (r.abstain) {
      // Not one of the model's crops/diseases, or not a leaf: no diagnosis, no treatment.
      $("not-recognised-text").textContent = " " + (r.advice || "");
      show("result");
      return;
    }
    $("pred-crop").textContent = r.crop || "";
    $("pred-label").textContent = r.healthy ? "Healthy leaf" : (r.disease || r.prediction.label);
    $("pred-confidence").textContent = pct(r.prediction.probability) + " confident";
    const sev = $("pred-severity");
    sev.textContent = SEVERITY[r.severity] || r.severity;
    sev.className = "badge " + (r.severity || "");
    $("pathogen").textContent = r.pathogen || "";
    renderBars(r.top_k);
    $("symptoms").textContent = r.symptoms || "";
    $("symptoms-wrap").style.display = r.symptoms ? "" : "none";
    (r.treatment || []).forEach((step) => {
      const li = document.createElement("li");
      li.textContent = step;
      $("treatment").append(li);
    });
    $("advice").textContent = r.advice || "";
    $("advice").className = r.healthy ? "" : (r.severity || "");
    $("advice").style.display = r.advice && !r.low_confidence ? "" : "none";
    $("low-confidence").hidden = !r.low_confidence;
    $("low-text").textContent = r.low_confidence ? " " + r.advice : "";
    show("result");
    if (window.innerWidth < 780) $("result-h").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  // Camera, file picker and drag-and-drop all hand the first file to onFile.
  function wireInputs(onFile) {
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
  }

  root.CropdocCard = { $, show, showError, pct, showPhoto, render, wireInputs };
})(window);
