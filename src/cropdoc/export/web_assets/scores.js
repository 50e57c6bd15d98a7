/* cropdoc: probabilities and OOD scores from the model's outputs, as Python computes them.
 *
 * The same formulas as cropdoc.probabilities.softmax and cropdoc.ood (float64, row
 * maximum subtracted; msp at the calibration temperature, energy at T = 1, the squared
 * Mahalanobis distance of the penultimate features to the nearest class mean), so the
 * page abstains on the photos `cropdoc predict` abstains on. tests/test_web_export.py
 * runs this file under Node against cropdoc.ood. Plain script: defines CropdocScores in a
 * page, module.exports under Node.
 */
"use strict";
(function (root) {
  const tables = new WeakMap(); // ood.params -> what the Mahalanobis distance reuses

  function logSumExp(values) {
    const m = Math.max(...values);
    return m + Math.log(values.reduce((s, v) => s + Math.exp(v - m), 0));
  }

  // cropdoc.probabilities.softmax: float64, after subtracting the row maximum.
  function softmax(logits, temperature) {
    const z = logits.map((v) => v / temperature);
    const m = Math.max(...z);
    const e = z.map((v) => Math.exp(v - m));
    const total = e.reduce((s, v) => s + v, 0);
    return e.map((v) => v / total);
  }

  function dot(a, b) {
    let s = 0;
    for (let i = 0; i < a.length; i++) s += a[i] * b[i];
    return s;
  }

  // What the squared Mahalanobis distance needs per class, computed once (cropdoc.ood).
  function mahalanobisTables(p) {
    const d = p.means[0].length;
    const flat = p.basis.flat();
    const basis = [];
    for (let k = 0; k < flat.length / d; k++) basis.push(flat.slice(k * d, (k + 1) * d));
    return {
      basis, means: p.means, invEig: p.inv_eigenvalues, invRes: p.inv_residual_variance || 0,
      meanProj: p.means.map((m) => basis.map((row) => dot(row, m))),
      meanSq: p.means.map((m) => dot(m, m)),
    };
  }

  // cropdoc.ood.mahalanobis_distance: to the nearest class mean, shared covariance.
  function mahalanobis(f, t) {
    const fp = t.basis.map((row) => dot(row, f));
    const fsq = dot(f, f);
    let best = Infinity;
    for (let c = 0; c < t.means.length; c++) {
      let inside = 0;
      let scaled = 0;
      for (let k = 0; k < fp.length; k++) {
        const q = fp[k] - t.meanProj[c][k];
        inside += q * q;
        scaled += q * q * t.invEig[k];
      }
      const sq = fsq - 2 * dot(f, t.means[c]) + t.meanSq[c];
      best = Math.min(best, scaled + t.invRes * Math.max(sq - inside, 0));
    }
    return best;
  }

  // The bundle's OOD score (higher = stranger), as cropdoc.ood.ood_scores computes it.
  function oodScore(ood, logits, probs, features) {
    if (!ood) return null;
    if (ood.kind === "msp") return 1 - Math.max(...probs); // at the calibration temperature
    if (ood.kind === "energy") return -logSumExp(logits); // at T = 1, as in the paper
    if (ood.kind === "mahalanobis" && features) {
      if (!tables.has(ood.params)) tables.set(ood.params, mahalanobisTables(ood.params));
      return mahalanobis(features, tables.get(ood.params));
    }
    return null;
  }

  const api = { softmax, logSumExp, oodScore };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.CropdocScores = api;
})(typeof self !== "undefined" ? self : this);
