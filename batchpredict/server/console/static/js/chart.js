// A small line chart drawn as inline SVG: a rate (per second) over time. No library.

import { fmtDuration, fmtRate, h, svg } from "./ui.js";

const DEFAULT_WIDTH = 560;
const H = 170;
const PAD = { left: 44, right: 12, top: 12, bottom: 24 };

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/**
 * A <figure> with a chart of `points` ([{t: seconds since start, v: value}]) and a caption with
 * the latest value. `series` picks the colour (CSS class series-NAME). `width` is the width it
 * will be shown at (CSS px), so its labels keep their size on a phone as on a wide screen.
 */
export function rateChart(id, title, unit, series, points, emptyText = "No samples yet.", width = DEFAULT_WIDTH) {
  const W = Math.round(Math.min(900, Math.max(240, width)));
  const latest = points.length ? points[points.length - 1].v : null;
  const peak = points.reduce((m, p) => Math.max(m, p.v), 0);
  const figure = h("figure", { class: "chart", id });
  const caption = h("figcaption", {}, h("span", {}, title),
    h("span", { class: "muted", "data-latest": latest ?? "" }, latest === null ? "–" : `${fmtRate(latest)} ${unit}`));
  const label = points.length
    ? `${title}: latest ${fmtRate(latest)} ${unit}, peak ${fmtRate(peak)} ${unit}, over ${Math.round(points[points.length - 1].t - points[0].t)} seconds.`
    : `${title}: no samples yet.`;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": label });
  const x0 = PAD.left;
  const x1 = W - PAD.right;
  const y0 = H - PAD.bottom;
  const y1 = PAD.top;
  const top = niceMax(peak);
  const tMin = points.length ? points[0].t : 0;
  const tMax = points.length > 1 ? points[points.length - 1].t : tMin + 1;
  const xs = (t) => x0 + ((t - tMin) / Math.max(1e-9, tMax - tMin)) * (x1 - x0);
  const ys = (v) => y0 - (v / top) * (y0 - y1);
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    chart.append(svg("line", { class: "chart-grid", x1: x0, x2: x1, y1: ys(v), y2: ys(v) }));
    chart.append(svg("text", { class: "chart-label", x: x0 - 6, y: ys(v) + 4, "text-anchor": "end" }, fmtRate(v)));
  }
  chart.append(svg("text", { class: "chart-label", x: x0, y: H - 6 }, points.length ? "0 s" : ""));
  if (points.length > 1) {
    chart.append(svg("text", { class: "chart-label", x: x1, y: H - 6, "text-anchor": "end" },
      fmtDuration((tMax - tMin) * 1000)));
    const line = points.map((p) => `${xs(p.t).toFixed(1)},${ys(p.v).toFixed(1)}`).join(" ");
    chart.append(svg("polygon", {
      class: `chart-area series-${series}`,
      points: `${xs(tMin).toFixed(1)},${y0} ${line} ${xs(tMax).toFixed(1)},${y0}`,
    }));
    chart.append(svg("polyline", { class: `chart-line series-${series}`, points: line, fill: "none" }));
  } else {
    chart.append(svg("text", { class: "chart-label", x: (x0 + x1) / 2, y: (y0 + y1) / 2, "text-anchor": "middle" },
      emptyText));
  }
  figure.append(caption, chart);
  return figure;
}

/**
 * Rates from cumulative samples ([{t, done, tokens}]), each over the samples of the last
 * `windowSeconds`, so steps in the counts (tokens are counted when a chunk is committed) smooth out.
 * The first interval's rate is also drawn at its start: two samples make a (flat) line.
 */
export function ratesOf(samples, windowSeconds = 5) {
  const rows = [];
  const tokens = [];
  let j = 0;
  for (let i = 1; i < samples.length; i++) {
    while (j < i - 1 && samples[i].t - samples[j + 1].t >= windowSeconds) j++;
    const dt = samples[i].t - samples[j].t;
    if (dt <= 0) continue;
    const t = samples[i].t - samples[0].t;
    const r = { t, v: Math.max(0, (samples[i].done - samples[j].done) / dt) };
    const k = { t, v: Math.max(0, (samples[i].tokens - samples[j].tokens) / dt) };
    if (!rows.length) {
      rows.push({ ...r, t: samples[j].t - samples[0].t });
      tokens.push({ ...k, t: samples[j].t - samples[0].t });
    }
    rows.push(r);
    tokens.push(k);
  }
  return { rows, tokens };
}

/** Samples from GET /batchpredict/v1/{job}/progressHistory: [{t: unix seconds, done, tokens}]. */
export function samplesOf(history) {
  return (history.samples || []).map((s) => ({
    t: new Date(s.time).getTime() / 1000,
    done: Number(s.doneCount),
    tokens: Number(s.totalTokenCount),
  })).filter((s) => isFinite(s.t) && isFinite(s.done) && isFinite(s.tokens));
}

/**
 * A steady rows/s for an ETA: rows over time with older intervals weighing less (by
 * e^(-age/tau)). A run shorter than `tauSeconds` gets about its whole-run rate; a longer one the
 * rate of about its last `tauSeconds`, so a burst of committed rows moves it little.
 * null with fewer than two samples.
 */
export function steadyRate(samples, tauSeconds = 60) {
  let rows = 0;
  let seconds = 0;
  for (let i = 1; i < samples.length; i++) {
    const dt = samples[i].t - samples[i - 1].t;
    if (!(dt > 0)) continue;
    const decay = Math.exp(-dt / tauSeconds);
    rows = rows * decay + Math.max(0, samples[i].done - samples[i - 1].done);
    seconds = seconds * decay + dt;
  }
  return seconds > 0 ? rows / seconds : null;
}
