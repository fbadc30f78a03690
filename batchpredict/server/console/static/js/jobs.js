// The jobs list: GET /v1/batchPredictionJobs?filter=&pageSize=&pageToken= (every project the
// caller may use), newest first. Filters are written in the API's own syntax, and shown.
// Refreshes every 2 s while a job on the page is pending or running, else every 15 s.

import { api } from "./api.js";
import { go } from "./nav.js";
import {
  consoleUrl, errorBox, field, fmtInt, h, isActive, jobCounts, jobId, progressBar, replace,
  shortModel, stateBadge, timeEl,
} from "./ui.js";

const STATES = ["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLING", "CANCELLED"];
const PAGE_SIZES = [10, 25, 50, 100];
const FAST_MS = 2000;
const SLOW_MS = 15000;

/** The API filter for the form's choices: state="JOB_STATE_X" AND display_name:"name*". */
export function buildFilter(state, name) {
  const parts = [];
  if (state) parts.push(`state="JOB_STATE_${state}"`);
  if (name) {
    const quoted = name.replace(/\\/g, "\\\\").replace(/"/g, '\\"');
    parts.push(`display_name:"${quoted}${name.includes("*") ? "" : "*"}"`);
  }
  return parts.join(" AND ");
}

export function jobsView(root, params) {
  document.title = "Jobs · batchpredict";
  const state = STATES.includes(params.get("state")) ? params.get("state") : "";
  const name = params.get("name") || "";
  const pageSize = PAGE_SIZES.includes(Number(params.get("pageSize")))
    ? Number(params.get("pageSize")) : 25;
  const filter = buildFilter(state, name);
  const tokens = [""]; // page tokens of the pages seen, to go back
  let page = 0;
  let timer = null;
  let alive = true;

  const stateSelect = h("select", { name: "state" },
    h("option", { value: "" }, "All states"),
    STATES.map((s) => h("option", { value: s, selected: s === state }, s.charAt(0) + s.slice(1).toLowerCase())));
  const nameInput = h("input", {
    type: "text", name: "name", value: name, placeholder: "e.g. nightly-eval",
    autocomplete: "off", spellcheck: "false",
  });
  const sizeSelect = h("select", { name: "pageSize" },
    PAGE_SIZES.map((n) => h("option", { value: n, selected: n === pageSize }, String(n))));
  const form = h("form", { class: "toolbar", role: "search", "aria-label": "Filter jobs" },
    field("filter-state", "State", stateSelect),
    field("filter-name", "Name starts with", nameInput),
    field("filter-size", "Per page", sizeSelect),
    h("div", { class: "field" }, h("button", { type: "submit", class: "primary" }, "Apply")),
    filter ? h("div", { class: "field" }, h("a", { href: "/console/", "data-link": true, class: "button" }, "Clear")) : null);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = new URLSearchParams();
    if (stateSelect.value) q.set("state", stateSelect.value);
    if (nameInput.value.trim()) q.set("name", nameInput.value.trim());
    if (Number(sizeSelect.value) !== 25) q.set("pageSize", sizeSelect.value);
    const qs = q.toString();
    const focused = document.activeElement;
    go(`/console/${qs ? `?${qs}` : ""}`, { focusId: form.contains(focused) ? focused.id : null });
  });
  stateSelect.addEventListener("change", () => form.requestSubmit());
  sizeSelect.addEventListener("change", () => form.requestSubmit());

  const tbody = h("tbody");
  const message = h("div");
  const refreshNote = h("span", { class: "refresh-note", "aria-live": "off" });
  const newer = h("button", { type: "button", onclick: () => { page -= 1; load(); } }, "← Newer");
  const older = h("button", { type: "button", onclick: () => { page += 1; load(); } }, "Older →");
  const pageLabel = h("span", { class: "muted small" });

  replace(root,
    h("div", { class: "page-head" },
      h("div", {}, h("h1", { tabindex: -1 }, "Batch prediction jobs"),
        h("p", { class: "sub muted" }, "Every job you may see, newest first.")),
      h("a", { href: "/console/create", "data-link": true, class: "button primary" }, "+ Create job")),
    form,
    h("p", { class: "filter-text" }, "API filter: ",
      filter ? h("code", { id: "active-filter" }, filter) : h("span", {}, "none"), " ", refreshNote),
    message,
    h("div", { class: "table-wrap" },
      h("table", { id: "jobs-table" },
        h("caption", { class: "sr-only" }, "Batch prediction jobs"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Job"), h("th", { scope: "col" }, "Model"),
          h("th", { scope: "col" }, "State"), h("th", { scope: "col" }, "Progress"),
          h("th", { scope: "col", class: "num" }, "Succeeded"), h("th", { scope: "col", class: "num" }, "Failed"),
          h("th", { scope: "col", class: "num" }, "Incomplete"),
          h("th", { scope: "col" }, "Created"), h("th", { scope: "col" }, "Ended"))),
        tbody)),
    h("nav", { class: "pager", "aria-label": "Pages" }, pageLabel, newer, older));

  function row(job) {
    const c = jobCounts(job);
    const { bar, text } = progressBar(job, { label: `Progress of ${job.displayName}` });
    return h("tr", { dataset: { job: job.name } },
      h("td", {},
        h("a", { class: "job-link", href: consoleUrl(job.name), "data-link": true }, job.displayName),
        h("div", { class: "muted small mono" }, `${jobId(job.name)} · ${job.name.split("/")[1]}`)),
      h("td", { title: job.model }, shortModel(job.model)),
      h("td", {}, stateBadge(job.state)),
      h("td", { class: "progress" }, bar, h("div", { class: "progress-text" }, text)),
      h("td", { class: "num" }, job.completionStats ? fmtInt(c.succeeded) : "–"),
      h("td", { class: "num" }, job.completionStats ? fmtInt(c.failed) : "–"),
      h("td", { class: "num" }, job.completionStats ? fmtInt(c.incomplete) : "–"),
      h("td", { class: "when" }, timeEl(job.createTime)),
      h("td", { class: "when" }, timeEl(job.endTime)));
  }

  async function load() {
    clearTimeout(timer);
    const q = new URLSearchParams({ pageSize: String(pageSize) });
    if (filter) q.set("filter", filter);
    if (tokens[page]) q.set("pageToken", tokens[page]);
    let data;
    try {
      data = await api(`/v1/batchPredictionJobs?${q}`);
    } catch (err) {
      if (!alive) return;
      replace(message, errorBox(err, err.httpStatus === 401
        ? h("button", { type: "button", onclick: load }, "Enter a token") : null));
      timer = setTimeout(load, SLOW_MS);
      return;
    }
    if (!alive) return;
    message.replaceChildren();
    const jobs = data.batchPredictionJobs || [];
    tokens[page + 1] = data.nextPageToken || "";
    // Keep keyboard focus on the same job across a refresh.
    const focused = document.activeElement && document.activeElement.closest("tr[data-job]");
    const focusedJob = focused ? focused.dataset.job : null;
    replace(tbody, jobs.length ? jobs.map(row)
      : h("tr", {}, h("td", { colspan: 9, class: "empty" }, filter
        ? "No job matches this filter." : "No jobs yet. Create one to get started.")));
    if (focusedJob) {
      const link = tbody.querySelector(`tr[data-job="${CSS.escape(focusedJob)}"] a`);
      if (link) link.focus();
    }
    newer.disabled = page === 0;
    older.disabled = !data.nextPageToken;
    pageLabel.textContent = `Page ${page + 1}`;
    const active = jobs.some((j) => isActive(j.state));
    refreshNote.textContent = active ? "· refreshing every 2 s while jobs run" : "";
    timer = setTimeout(load, active ? FAST_MS : SLOW_MS);
  }

  load();
  return () => { alive = false; clearTimeout(timer); };
}
