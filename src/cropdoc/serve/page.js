/* cropdoc serve's page: the photo goes to POST /predict; the card shows the answer. */
"use strict";
(function () {
  const { $, showError, showPhoto, render, wireInputs } = CropdocCard;
  let maxUploadMb = 10;

  // Phone photos (12-48 MP) are shrunk before upload: the model needs a few hundred pixels,
  // and a 48 MP photo would pass neither the upload nor the pixel limit. Formats the
  // browser cannot decode (HEIC on most) are sent as they are; the server reads them.
  const MAX_SIDE = 1600;
  async function shrink(file) {
    let bitmap;
    try { bitmap = await createImageBitmap(file, { imageOrientation: "from-image" }); }
    catch (e) { return { blob: file, name: file.name, resized: false }; }
    const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
    if (scale === 1 && file.size <= 2 * 1048576) {
      bitmap.close();
      return { blob: file, name: file.name, resized: false };
    }
    const canvas = document.createElement("canvas");
    canvas.width = Math.max(1, Math.round(bitmap.width * scale));
    canvas.height = Math.max(1, Math.round(bitmap.height * scale));
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
    bitmap.close();
    const blob = await new Promise((ok) => canvas.toBlob(ok, "image/jpeg", 0.9));
    if (!blob) return { blob: file, name: file.name, resized: false };
    const name = file.name.replace(/\.[^.]*$/, "") + ".jpg";
    return { blob: blob, name: name, resized: true, width: canvas.width, height: canvas.height };
  }

  async function diagnose(file) {
    if (!file) return;
    showPhoto(file);
    const upload = await shrink(file);
    if (upload.resized) {
      $("filename").textContent += " · sent as " + upload.width + "×" + upload.height;
    }
    if (upload.blob.size > maxUploadMb * 1048576) {
      showError("The file is larger than " + maxUploadMb + " MB. Send a smaller photo.");
      return;
    }
    const form = new FormData();
    form.append("files", upload.blob, upload.name);
    try {
      const response = await fetch("predict?explain=true", { method: "POST", body: form });
      let body = null;
      try { body = await response.json(); } catch (e) { body = null; }
      if (!response.ok) {
        const item = body && body.results && body.results[0];
        showError((item && item.error ? item.error : (body && body.detail) || response.statusText) +
          ". Try another photo (JPEG or PNG of a leaf).");
        return;
      }
      const r = body.results[0];
      if (!r.ok) { showError(r.error); return; }
      render(r);
    } catch (e) {
      showError("The server could not be reached (" + e.message + "). Check the connection and try again.");
    }
  }

  wireInputs(diagnose);
  fetch("model").then((r) => r.json()).then((m) => {
    maxUploadMb = m.max_upload_mb || maxUploadMb;
    const f1 = m.metrics && m.metrics.test && m.metrics.test.macro_f1;
    $("model-info").textContent = "Model: " + m.arch + " · " + m.num_classes + " classes · " +
      m.backend + " backend" + (typeof f1 === "number" ? " · test macro-F1 " + f1.toFixed(3) : "") + ".";
  }).catch(() => { $("model-info").textContent = "Model information unavailable."; });
})();
