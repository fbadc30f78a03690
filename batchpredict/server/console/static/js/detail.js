// One job: GET /v1/{name} every second while it is active. Rows/s and tokens/s are drawn from
// the history the server keeps with the job (GET /batchpredict/v1/{name}/progressHistory: its
// committed counts every few seconds), so a finished job shows how it ran, and the ETA uses a
// smoothed rate over that history. Failed rows come from GET /batchpredict/v1/{name}/failedRows;
// the download from .../predictions.jsonl, offered only when the job has output lines.

import { api, download, getToken } from "./api.js";
import { rateChart, ratesOf, samplesOf, steadyRate } from "./chart.js";
import { go } from "./nav.js";
import { cliSnippet, curlSnippet, sdkSnippet } from "./snippets.js";
import {
  confirmDialog, copyText, errorBox, faceName, fmtDuration, fmtInt, fmtRate, h, isActive, jobCounts,
  jobDuration, jobId, progressBar, replace, shortModel, since, stateBadge, timeEl, toast,
} from "./ui.js";

const POLL_MS = 1000;
const HISTORY_MS = 2000; // the server adds a sample every few seconds
const FAILED_ROWS = 10;
/** [header, header class, cell class] of the failed rows table. */
const FAILED_COLUMNS = [
  ["Output line", "num", "num"], ["Your fields", null, "mono small"],
  ["Status", null, "failed-status"], ["Request", null, null],
];
/** google.rpc.Code names, for partialFailures. */
const CODES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
  "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"];

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
  let samples = [];
  let historyAt = 0;
  let historyFor = "";
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
  const resumeButton = h("button", { type: "button", id: "resume-job", hidden: true }, "Resume job");
  const deleteButton = h("button", { type: "button", class: "danger", id: "delete-job", hidden: true }, "Delete job");
  const errorEl = h("div");
  const partialEl = h("section", { class: "panel", id: "partial-failures", "aria-labelledby": "partial-title", hidden: true });
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
      h("div", { class: "actions" }, downloadLink, resumeButton, cancelButton, deleteButton)),
    errorEl,
    partialEl,
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
  // A job FAILED by its store, storage or disk (error.resumable) runs on from its committed rows.
  resumeButton.addEventListener("click", async () => {
    try {
      job = await api(`/batchpredict/v1/${name}:resume`, { method: "POST", json: {} });
      toast("Resumed: the job runs on from its committed rows.");
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
    resumeButton.hidden = !(job.state === "JOB_STATE_FAILED" && job.error && job.error.resumable);
    deleteButton.hidden = active;
    // Only lines already committed are in the output: none, and there is nothing to download.
    const c = jobCounts(job);
    downloadLink.hidden = !(job.outputInfo && job.outputInfo.gcsOutputDirectory) ||
      !job.completionStats || c.succeeded + c.failed === 0;
    downloadLink.textContent = active ? "Download rows so far" : "Download predictions.jsonl";
    const waiting = job.progress && job.progress.waitingFor;
    if (job.error && job.error.message) {
      const kind = job.state === "JOB_STATE_CANCELLED" ? "info" : "error";
      replace(errorEl, h("div", { class: `callout ${kind}`, role: kind === "error" ? "alert" : null, id: "job-error" },
        h("p", {}, job.error.message)));
    } else if (waiting && isActive(job.state)) {
      // riding out an outage of its store, storage or disk: "waiting for gs://... since 12:03"
      const at = new Date(job.progress.waitingSince).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      replace(errorEl, h("div", { class: "callout info", role: "status", id: "job-waiting" },
        h("p", {}, `Waiting for ${waiting} since ${at}`),
        job.progress.waitingReason ? h("p", { class: "muted small" }, job.progress.waitingReason) : null));
    } else {
      errorEl.replaceChildren();
    }
  }

  /** google.rpc.Status list of the resource: up to 20 {code, message} (rows that failed). */
  function renderPartialFailures() {
    const list = Array.isArray(job.partialFailures) ? job.partialFailures : [];
    partialEl.hidden = !list.length;
    if (!list.length) return;
    replace(partialEl,
      h("h2", { id: "partial-title" }, "Partial failures"),
      h("p", { class: "hint" }, `The first ${list.length} errors the job reported (partialFailures).`),
      h("ol", { class: "partial-failures" }, list.map((st) => {
        const code = Number(st.code) || 0;
        return h("li", {},
          h("span", { class: "code" }, `${CODES[code] || "CODE"} (${code})`), ": ",
          st.message || "(no message)");
      })));
  }

  function renderProgress() {
    const c = jobCounts(job);
    const { bar, pct, text } = progressBar(job, { big: true, label: "Rows done" });
    const rate = job.state === "JOB_STATE_RUNNING" ? steadyRate(samples) : null;
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
      ? "Samples appear here every few seconds while the job runs."
      : "No samples: the job did not run long enough to record any.";
    // As .charts lays them out: two side by side from 2 x 320 px (and the 1 rem gap) up.
    const room = chartsEl.clientWidth || 560;
    const width = room >= 656 ? (room - 16) / 2 : room;
    replace(chartsEl,
      rateChart("chart-rows", "Rows per second", "rows/s", "rows", rows, empty, width),
      rateChart("chart-tokens", "Tokens per second", "tokens/s", "tokens", tokens, empty, width));
    const c = jobCounts(job);
    const ran = jobDuration(job);
    const avg = ran && ran > 0 ? ` Over the whole run: ${fmtRate(c.done / (ran / 1000))} rows/s, ` +
      `${fmtRate(c.totalTokens / (ran / 1000))} tokens/s.` : "";
    averagesEl.textContent = "Recorded by the server as the job commits rows, every few seconds " +
      "(tokens are counted as rows are committed)." + avg;
  }

  function renderDetails() {
    const labels = job.labels && Object.keys(job.labels).length
      ? Object.entries(job.labels).map(([k, v]) => `${k}=${v}`).join(", ") : null;
    replace(detailsEl, props([
      ["Name", h("span", { class: "mono" }, job.name)],
      ["Created through", h("span", { id: "job-face" }, faceName(job.face))],
      ["Model", h("span", { title: job.model }, shortModel(job.model))],
      ["Model version", job.modelVersionId],
      ["Input", h("span", { class: "mono" }, job.inputConfig.gcsSource
        ? job.inputConfig.gcsSource.uris.join("\n") : job.inputConfig.bigquerySource.inputUri)],
      ["Output prefix", h("span", { class: "mono" }, job.outputConfig.gcsDestination
        ? job.outputConfig.gcsDestination.outputUriPrefix : job.outputConfig.bigqueryDestination.outputUri)],
      ["Output folder", job.outputInfo && job.outputInfo.gcsOutputDirectory ? h("span", { class: "mono", id: "output-dir" }, job.outputInfo.gcsOutputDirectory) : null],
      ["Output table", job.outputInfo && job.outputInfo.bigqueryOutputTable ? h("span", { class: "mono" }, `${job.outputInfo.bigqueryOutputDataset}.${job.outputInfo.bigqueryOutputTable}`) : null],
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
      h("div", { class: "table-wrap" }, h("table", { id: "failed-table", role: "table" },
        h("caption", { class: "sr-only" }, "Failed rows"),
        h("thead", { role: "rowgroup" }, h("tr", { role: "row" },
          FAILED_COLUMNS.map(([label, cls]) => h("th", { scope: "col", role: "columnheader", class: cls }, label)))),
        h("tbody", { role: "rowgroup" }, rows.map((r) => {
          const { outputLine, status, request, response, processed_time: when, ...extras } = r;
          void response; void when;
          const m = statusMessage(status);
          const cells = [
            String(outputLine),
            Object.keys(extras).length ? JSON.stringify(extras) : "–",
            [m.head ? h("strong", {}, `${m.head}${m.code ? ` (${m.code})` : ""}: `) : null, m.message],
            h("details", {}, h("summary", {}, "Show"), h("pre", { class: "json" }, JSON.stringify(request, null, 2))),
          ];
          return h("tr", { role: "row" }, cells.map((content, i) => h("td", {
            role: "cell", class: FAILED_COLUMNS[i][2], "data-label": FAILED_COLUMNS[i][0],
          }, content)));
        })))));
  }

  function render() {
    renderHead();
    renderPartialFailures();
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
    await loadHistory();
    if (!alive) return;
    render();
    const active = isActive(job.state);
    await renderFailed(!active);
    clearTimeout(timer);
    if (alive && active) timer = setTimeout(refresh, POLL_MS);
  }

  /** The server's samples: every few seconds while the job runs, once more when it ends. */
  async function loadHistory() {
    if (!job.startTime) return;
    const key = isActive(job.state) ? "active" : job.state;
    if (key === historyFor && (key !== "active" || Date.now() - historyAt < HISTORY_MS)) return;
    try {
      samples = samplesOf(await api(`/batchpredict/v1/${name}/progressHistory`));
      historyFor = key;
      historyAt = Date.now();
    } catch {
      historyAt = Date.now(); // the charts say there are no samples; the page goes on
    }
  }

  // The charts are drawn for their width: draw them again when it changes.
  let resized = null;
  const onResize = () => {
    clearTimeout(resized);
    resized = setTimeout(() => { if (job && alive) renderCharts(); }, 150);
  };
  window.addEventListener("resize", onResize);

  refresh();
  return () => {
    alive = false;
    clearTimeout(timer);
    clearTimeout(resized);
    window.removeEventListener("resize", onResize);
  };
}
