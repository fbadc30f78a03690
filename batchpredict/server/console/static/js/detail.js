// One job: GET /v1/{name} every second while it is active. Rows/s and tokens/s are computed from
// those samples of the job resource (`progress.doneCount`, `progress.totalTokenCount`), so the
// charts cover the time this page has been open. Failed rows come from
// GET /batchpredict/v1/{name}/failedRows; the download from .../predictions.jsonl.

import { api, download, getToken } from "./api.js";
import { rateChart, ratesOf } from "./chart.js";
import { go } from "./nav.js";
import { cliSnippet, curlSnippet, sdkSnippet } from "./snippets.js";
import {
  confirmDialog, copyText, errorBox, fmtDuration, fmtInt, fmtRate, h, isActive, jobCounts,
  jobId, progressBar, replace, shortModel, since, stateBadge, timeEl, toast,
} from "./ui.js";

const POLL_MS = 1000;
const FAILED_ROWS = 10;
const MAX_SAMPLES = 600;
/** Samples survive navigating away and back (not a reload). */
const samplesByJob = new Map();

function stat(label, value, cls = "") {
  return h("div", { class: `stat ${cls}` }, h("dt", {}, label), h("dd", {}, value));
}

function props(pairs) {
  return h("dl", { class: "props" }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

/** The message inside a row's status: 'Bad Request: {"error": {...}}' -> its error.message. */
export function statusMessage(status) {
  const at = status.indexOf("{");
  if (at >= 0) {
    try {
      const e = JSON.parse(status.slice(at)).error;
      if (e && e.message) return { head: status.slice(0, at).replace(/:\s*$/, ""), code: e.code, message: e.message };
    } catch { /* not JSON: show it whole */ }
  }
  return { head: "", code: null, message: status };
}

export function detailView(root, name) {
  document.title = `Job ${jobId(name)} · batchpredict`;
  const samples = samplesByJob.get(name) || [];
  samplesByJob.set(name, samples);
  let job = null;
  let timer = null;
  let alive = true;
  let failedSeen = -1;
  let failedAt = 0;
  let tab = "cli";

  const title = h("h1", { tabindex: -1 }, "Job ", jobId(name));
  const badge = h("span", { id: "job-state" });
  const sub = h("p", { class: "sub muted mono small" }, name);
  const downloadLink = h("a", {
    class: "button", id: "download", href: `/batchpredict/v1/${name}/predictions.jsonl`,
    download: `job-${jobId(name)}-predictions.jsonl`, hidden: true,
  }, "Download predictions.jsonl");
  const cancelButton = h("button", { type: "button", class: "danger", id: "cancel-job", hidden: true }, "Cancel job");
  const deleteButton = h("button", { type: "button", class: "danger", id: "delete-job", hidden: true }, "Delete job");
  const errorEl = h("div");
  const progressEl = h("div", { class: "panel", id: "progress-panel" });
  const timelineEl = h("div", { class: "panel", id: "timeline" });
  const rowsEl = h("div", { class: "panel", id: "rows-panel" });
  const usageEl = h("div", { class: "panel", id: "usage-panel" });
  const chartsEl = h("div", { class: "charts" });
  const averagesEl = h("p", { class: "hint" });
  const failedEl = h("div", { id: "failed-rows" });
  const detailsEl = h("div");
  const codeEl = h("div", { class: "snippet" });
  const tabs = h("div", { role: "tablist", "aria-label": "Code for this job" });

  replace(root,
    h("div", { class: "crumbs" }, h("a", { href: "/console/", "data-link": true }, "Jobs"), " › ", jobId(name)),
    h("div", { class: "page-head" },
      h("div", {}, h("div", { class: "title-row" }, title, badge), sub),
      h("div", { class: "actions" }, downloadLink, cancelButton, deleteButton)),
    errorEl,
    progressEl,
    h("div", { class: "grid" }, timelineEl, rowsEl, usageEl),
    h("section", { class: "panel", "aria-labelledby": "throughput-title" },
      h("h2", { id: "throughput-title" }, "Throughput"), chartsEl, averagesEl),
    h("section", { class: "panel", "aria-labelledby": "failed-title" },
      h("h2", { id: "failed-title" }, "Failed rows"), failedEl),
    h("section", { class: "panel", "aria-labelledby": "details-title" },
      h("h2", { id: "details-title" }, "Details"), detailsEl),
    h("section", { class: "panel", "aria-labelledby": "code-title" },
      h("h2", { id: "code-title" }, "The same job from code"), tabs, codeEl));

  // -- actions ----------------------------------------------------------------------------
  downloadLink.addEventListener("click", (event) => {
    if (!getToken()) return; // a plain link works on an open server
    event.preventDefault(); // a link cannot send the token: fetch it, then save the blob
    download(downloadLink.getAttribute("href"), downloadLink.getAttribute("download"))
      .catch((err) => toast(err.message, "error"));
  });
  cancelButton.addEventListener("click", async () => {
    const ok = await confirmDialog(`Cancel “${job.displayName}”?`,
      "Rows not yet answered are skipped; every completed row is kept in predictions.jsonl.", "Cancel job");
    if (!ok) return;
    try {
      await api(`/v1/${name}:cancel`, { method: "POST", json: {} });
      toast("Cancel requested: completed rows are kept.");
      refresh();
    } catch (err) { toast(err.message, "error"); }
  });
  deleteButton.addEventListener("click", async () => {
    const ok = await confirmDialog(`Delete “${job.displayName}”?`,
      "The job's record goes; its output files stay where they are.", "Delete job");
    if (!ok) return;
    try {
      await api(`/v1/${name}`, { method: "DELETE" });
      toast(`Job ${jobId(name)} deleted.`);
      go("/console/");
    } catch (err) { toast(err.message, "error"); }
  });

  // -- rendering --------------------------------------------------------------------------
  function renderHead() {
    document.title = `${job.displayName} · batchpredict`;
    replace(title, job.displayName);
    replace(badge, stateBadge(job.state));
    const active = isActive(job.state);
    cancelButton.hidden = !["JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_QUEUED"].includes(job.state);
    deleteButton.hidden = active;
    downloadLink.hidden = !(job.outputInfo && job.outputInfo.gcsOutputDirectory);
    downloadLink.textContent = active ? "Download rows so far" : "Download predictions.jsonl";
    if (job.error && job.error.message) {
      const kind = job.state === "JOB_STATE_CANCELLED" ? "info" : "error";
      replace(errorEl, h("div", { class: `callout ${kind}`, role: kind === "error" ? "alert" : null, id: "job-error" },
        h("p", {}, job.error.message)));
    } else {
      errorEl.replaceChildren();
    }
  }

  function currentRate() {
    const { rows } = ratesOf(samples);
    return rows.length ? rows[rows.length - 1].v : null;
  }

  function renderProgress() {
    const c = jobCounts(job);
    const { bar, pct, text } = progressBar(job, { big: true, label: "Rows done" });
    const rate = isActive(job.state) ? currentRate() : null;
    const extra = [];
    if (rate !== null) extra.push(`${fmtRate(rate)} rows/s`);
    if (rate && c.total) extra.push(`about ${fmtDuration(((c.total - c.done) / rate) * 1000)} left`);
    replace(progressEl,
      h("h2", {}, "Progress"),
      h("div", { class: "big-progress" }, bar, h("span", { class: "pct" }, `${Math.floor(pct)}%`)),
      h("p", { class: "progress-text", id: "progress-text" }, [text, ...extra].join(" · ")));
  }

  function renderTimeline() {
    const end = job.endTime;
    const endClass = { JOB_STATE_SUCCEEDED: "end-ok", JOB_STATE_FAILED: "end-bad", JOB_STATE_CANCELLED: "end-cancel" }[job.state] || "";
    const step = (what, when, note, cls) => h("li", { class: when ? `done ${cls || ""}` : "" },
      h("div", { class: "what" }, what),
      h("div", { class: "when" }, when ? timeEl(when) : h("span", { class: "muted" }, "not yet")),
      note ? h("div", { class: "muted small" }, note) : null);
    const endLabel = end ? `Ended ${job.state.replace("JOB_STATE_", "").toLowerCase()}` : "Ends";
    replace(timelineEl, h("h2", {}, "Timeline"), h("ol", { class: "timeline" },
      step("Created", job.createTime, null),
      step("Started", job.startTime, job.startTime ? `waited ${fmtDuration(since(job.createTime, job.startTime))}` : null),
      step(endLabel, end, end && job.startTime ? `ran ${fmtDuration(since(job.startTime, end))}` : null, endClass)));
  }

  function renderStats() {
    const c = jobCounts(job);
    const hasStats = !!job.completionStats;
    replace(rowsEl, h("h2", {}, "Rows"), h("dl", { class: "stats" },
      stat("Succeeded", hasStats ? fmtInt(c.succeeded) : "–", "ok"),
      stat("Failed", hasStats ? fmtInt(c.failed) : "–", c.failed ? "bad" : ""),
      stat("Incomplete", hasStats ? fmtInt(c.incomplete) : "–"),
      stat("Total", c.total === null ? "?" : fmtInt(c.total))));
    replace(usageEl, h("h2", {}, "Usage (successful rows)"), h("dl", { class: "stats" },
      stat("Prompt tokens", fmtInt(c.promptTokens)),
      stat("Output tokens", fmtInt(c.candidatesTokens)),
      stat("Total tokens", fmtInt(c.totalTokens))));
  }

  function renderCharts() {
    const { rows, tokens } = ratesOf(samples);
    const empty = isActive(job.state)
      ? "Samples appear here while the job runs and this page is open."
      : "Not sampled: this page was not open while the job ran.";
    replace(chartsEl,
      rateChart("chart-rows", "Rows per second", "rows/s", "rows", rows, empty),
      rateChart("chart-tokens", "Tokens per second", "tokens/s", "tokens", tokens, empty));
    const c = jobCounts(job);
    const ran = job.startTime ? since(job.startTime, job.endTime || new Date().toISOString()) : null;
    const avg = ran && ran > 0 ? ` Over the whole run: ${fmtRate(c.done / (ran / 1000))} rows/s, ` +
      `${fmtRate(c.totalTokens / (ran / 1000))} tokens/s.` : "";
    averagesEl.textContent = "Sampled from the job resource every second while this page is open " +
      "(tokens are counted as rows are committed)." + avg;
  }

  function renderDetails() {
    const labels = job.labels && Object.keys(job.labels).length
      ? Object.entries(job.labels).map(([k, v]) => `${k}=${v}`).join(", ") : null;
    replace(detailsEl, props([
      ["Name", h("span", { class: "mono" }, job.name)],
      ["Model", h("span", { title: job.model }, shortModel(job.model))],
      ["Model version", job.modelVersionId],
      ["Input", h("span", { class: "mono" }, job.inputConfig.gcsSource.uris.join("\n"))],
      ["Output prefix", h("span", { class: "mono" }, job.outputConfig.gcsDestination.outputUriPrefix)],
      ["Output folder", job.outputInfo ? h("span", { class: "mono", id: "output-dir" }, job.outputInfo.gcsOutputDirectory) : null],
      ["Labels", labels],
      ["Updated", timeEl(job.updateTime)],
    ]));
  }

  const SNIPPETS = { cli: ["CLI", cliSnippet], sdk: ["Python (google-genai)", sdkSnippet], curl: ["curl", curlSnippet] };
  function renderCode() {
    const keys = Object.keys(SNIPPETS);
    replace(tabs, keys.map((key) => h("button", {
      type: "button", role: "tab", id: `tab-${key}`, "aria-selected": String(key === tab),
      "aria-controls": "snippet-panel", tabindex: key === tab ? 0 : -1,
      onclick: () => { tab = key; renderCode(); document.getElementById(`tab-${key}`).focus(); },
      onkeydown: (event) => {
        const i = keys.indexOf(key);
        const next = { ArrowRight: keys[(i + 1) % keys.length], ArrowLeft: keys[(i + keys.length - 1) % keys.length], Home: keys[0], End: keys[keys.length - 1] }[event.key];
        if (next) { event.preventDefault(); tab = next; renderCode(); document.getElementById(`tab-${next}`).focus(); }
      },
    }, SNIPPETS[key][0])));
    const text = SNIPPETS[tab][1](job, location.origin);
    const copy = h("button", { type: "button", class: "copy" }, "Copy");
    copy.addEventListener("click", () => copyText(text, copy));
    replace(codeEl, h("div", { role: "tabpanel", id: "snippet-panel", "aria-labelledby": `tab-${tab}` },
      copy, h("pre", { class: "code", tabindex: 0, id: `snippet-${tab}` }, text)));
  }

  async function renderFailed(force) {
    const c = jobCounts(job);
    if (!job.outputInfo) {
      replace(failedEl, h("p", { class: "muted" }, "No output yet."));
      return;
    }
    if (!c.failed) {
      replace(failedEl, h("p", { class: "muted", id: "no-failed-rows" }, isActive(job.state) ? "No failed rows so far." : "No failed rows."));
      failedSeen = 0;
      return;
    }
    const now = Date.now();
    if (!force && c.failed === failedSeen) return;
    if (!force && now - failedAt < 3000) return;
    failedSeen = c.failed;
    failedAt = now;
    let data;
    try {
      data = await api(`/batchpredict/v1/${name}/failedRows?pageSize=${FAILED_ROWS}`);
    } catch (err) {
      replace(failedEl, errorBox(err));
      return;
    }
    if (!alive) return;
    const rows = data.failedRows || [];
    replace(failedEl,
      h("p", { class: "hint" }, `${fmtInt(c.failed)} rows failed. The first ${rows.length}, as written in the output:`),
      h("div", { class: "table-wrap" }, h("table", { id: "failed-table" },
        h("caption", { class: "sr-only" }, "Failed rows"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col", class: "num" }, "Output line"), h("th", { scope: "col" }, "Your fields"),
          h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Request"))),
        h("tbody", {}, rows.map((r) => {
          const { outputLine, status, request, response, processed_time: when, ...extras } = r;
          void response; void when;
          const m = statusMessage(status);
          return h("tr", {},
            h("td", { class: "num" }, String(outputLine)),
            h("td", { class: "mono small" }, Object.keys(extras).length ? JSON.stringify(extras) : "–"),
            h("td", { class: "failed-status" }, m.head ? h("strong", {}, `${m.head}${m.code ? ` (${m.code})` : ""}: `) : null, m.message),
            h("td", {}, h("details", {}, h("summary", {}, "Show"), h("pre", { class: "json" }, JSON.stringify(request, null, 2)))));
        })))));
  }

  function render() {
    renderHead();
    renderProgress();
    renderTimeline();
    renderStats();
    renderCharts();
    renderDetails();
    if (!tabs.childElementCount) renderCode();
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      job = await api(`/v1/${name}`);
    } catch (err) {
      if (!alive) return;
      if (err.httpStatus === 404) {
        replace(root, h("h1", { tabindex: -1 }, "Job not found"), errorBox(err),
          h("p", {}, h("a", { href: "/console/", "data-link": true }, "Back to the jobs")));
        return;
      }
      replace(errorEl, errorBox(err));
      timer = setTimeout(refresh, 5000);
      return;
    }
    if (!alive) return;
    const c = jobCounts(job);
    if (job.state === "JOB_STATE_RUNNING") {
      samples.push({ t: performance.now() / 1000, done: c.done, tokens: c.totalTokens });
      if (samples.length > MAX_SAMPLES) samples.splice(0, samples.length - MAX_SAMPLES);
    }
    render();
    const active = isActive(job.state);
    await renderFailed(!active);
    clearTimeout(timer);
    if (alive && active) timer = setTimeout(refresh, POLL_MS);
  }

  refresh();
  return () => { alive = false; clearTimeout(timer); };
}
