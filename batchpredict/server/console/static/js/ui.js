// Small DOM and formatting helpers shared by the views. Text always goes in through
// textContent / text nodes, never innerHTML: job names and row statuses are user data.

export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";
export function svg(tag, props = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  append(el, children);
  return el;
}

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
}

export function append(el, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// -- numbers and times ------------------------------------------------------------------
export const int = (v) => (v === null || v === undefined || v === "" ? null : Number(v));
export const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));

export function fmtRate(x) {
  if (x === null || x === undefined || !isFinite(x)) return "–";
  if (x === 0) return "0";
  return x < 10 ? x.toFixed(1) : Math.round(x).toLocaleString("en-US");
}

export function fmtBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

const pad = (n) => String(n).padStart(2, "0");

/** Local time as 2026-05-01 14:03:22. */
export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (isNaN(d)) return iso;
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function timeEl(iso) {
  if (!iso) return h("span", { class: "muted", text: "–" });
  const [date, clock] = fmtTime(iso).split(" ");
  // Two parts, so a narrow table can put the clock under the date (CSS).
  return h("time", { datetime: iso, title: iso },
    h("span", { class: "date" }, date), " ", h("span", { class: "clock" }, clock || ""));
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined || !isFinite(ms)) return "–";
  const s = Math.max(0, ms / 1000);
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${pad(Math.round(s % 60))} s`;
  return `${Math.floor(m / 60)} h ${pad(m % 60)} min`;
}

export const since = (a, b) => (a && b ? new Date(b) - new Date(a) : null);

/** How long a job ran (endTime - startTime), or has run so far; null before it starts. */
export function jobDuration(job, now = Date.now()) {
  if (!job.startTime) return null;
  const end = job.endTime ? new Date(job.endTime) : new Date(now);
  return Math.max(0, end - new Date(job.startTime));
}

// -- jobs -------------------------------------------------------------------------------
export const shortState = (state) => (state || "JOB_STATE_UNSPECIFIED").replace(/^JOB_STATE_/, "");
const ACTIVE = new Set([
  "JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_CANCELLING",
  "JOB_STATE_PAUSED", "JOB_STATE_UPDATING",
]);
export const isActive = (state) => ACTIVE.has(state);
export const jobId = (name) => name.split("/").pop();
/** The API a job came through (its `face`), as people name it. */
const FACES = { vertex: "Vertex AI", openai: "OpenAI Batch", gemini: "Gemini API", cli: "CLI" };
export const faceName = (face) => FACES[face] || FACES.vertex;
export const consoleUrl = (name) => `/console/${name}`;
export const shortModel = (model) => (model || "").replace(/^publishers\/google\/models\//, "");

/** Text cut to one line with an ellipsis (CSS), whole in its tooltip. */
export const ellipsis = (text, title = text, props = {}) =>
  h("span", { ...props, class: `ellipsis ${props.class || ""}`.trim(), title }, text);

/** A model name for tables: short, one line, the full resource name in its tooltip. */
export const modelEl = (model) => ellipsis(shortModel(model), model, { class: "model-name" });

/** Numbers from a BatchPredictionJob resource (int64 fields arrive as strings). */
export function jobCounts(job) {
  const st = job.completionStats || {};
  const p = job.progress || {};
  return {
    succeeded: int(st.successfulCount) ?? 0,
    failed: int(st.failedCount) ?? 0,
    incomplete: int(st.incompleteCount) ?? 0,
    done: int(p.doneCount) ?? 0,
    total: int(p.totalCount),
    promptTokens: int(p.promptTokenCount) ?? 0,
    candidatesTokens: int(p.candidatesTokenCount) ?? 0,
    totalTokens: int(p.totalTokenCount) ?? 0,
  };
}

export function stateBadge(state) {
  const short = shortState(state);
  return h("span", { class: `state state-${short.toLowerCase()}`, "data-state": state }, short);
}

/** A progress bar with a text line under it: "120 / 200 rows". */
export function progressBar(job, { big = false, label = "Rows done" } = {}) {
  const { done, total } = jobCounts(job);
  const short = shortState(job.state).toLowerCase();
  const known = total !== null && total > 0;
  const finished = !isActive(job.state);
  const pct = known ? Math.min(100, (done * 100) / total) : finished && done > 0 ? 100 : 0;
  const indeterminate = !known && job.state === "JOB_STATE_RUNNING";
  const bar = h("div", {
    class: `bar${big ? " big" : ""}${indeterminate ? " bar-indeterminate" : ""}`,
    role: "progressbar",
    "aria-label": label,
    "aria-valuemin": 0,
    "aria-valuemax": known ? total : null,
    "aria-valuenow": known ? done : null,
    "aria-valuetext": `${fmtInt(done)} of ${known ? fmtInt(total) : "an unknown number of"} rows`,
  });
  const fill = h("div", { class: `bar-fill fill-${short}` });
  fill.style.width = `${pct}%`;
  bar.append(fill);
  const text = `${fmtInt(done)} / ${known ? fmtInt(total) : "?"} rows`;
  return { bar, pct, text };
}

// -- feedback ---------------------------------------------------------------------------
let toastTimer = null;
export function toast(message, kind = "") {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = `toast ${kind}`;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 6000);
}

export function errorBox(err, extra) {
  return h("div", { class: "callout error", role: "alert" },
    h("p", {}, h("strong", {}, err.status ? `${err.status}: ` : "Error: "), err.message), extra);
}

/** Ask before a destructive action; resolves true when confirmed. Focus starts on "Keep it". */
export function confirmDialog(title, message, confirmLabel) {
  const dlg = document.getElementById("confirm-dialog");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-message").textContent = message;
  document.getElementById("confirm-yes").textContent = confirmLabel;
  dlg.returnValue = "";
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.showModal();
    document.getElementById("confirm-no").focus();
  });
}

export async function copyText(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Select and copy";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
}

/** A label + control pair. */
export function field(id, labelText, control, hint) {
  control.id = id;
  const parts = [h("label", { for: id }, labelText), control];
  if (hint) {
    const hintEl = h("p", { class: "hint", id: `${id}-hint` }, hint);
    control.setAttribute("aria-describedby", `${id}-hint`);
    parts.push(hintEl);
  }
  return h("div", { class: "field" }, parts);
}
