// The jobs list: GET /v1/batchPredictionJobs?filter=&pageSize=&pageToken= (every project the
// caller may use), newest first. Filters are written in the API's own syntax, and shown; a
// caller that sees several projects (GET /batchpredict/v1/defaults) can pick one, which filters
// on the job's name (name:"projects/P/*": every location of it).
// Refreshes every 2 s while a job on the page is pending or running, else every 15 s.
// On a narrow screen each row is a card (CSS), each cell labelled by its column (data-label).

import { api, onTokenChange } from "./api.js";
import { go } from "./nav.js";
import {
  consoleUrl, ellipsis, errorBox, faceName, field, fmtDuration, fmtInt, h, isActive, jobCounts,
  jobDuration, jobId, modelEl, progressBar, replace, stateBadge, timeEl,
} from "./ui.js";

const STATES = ["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLING", "CANCELLED"];
const PAGE_SIZES = [10, 25, 50, 100];
const FAST_MS = 2000;
const SLOW_MS = 15000;

const quote = (text) => text.replace(/\\/g, "\\\\").replace(/"/g, '\\"');

/**
 * The API filter for the form's choices:
 * name:"projects/P/*" AND state="JOB_STATE_X" AND display_name:"name*".
 */
export function buildFilter(state, name, project = "") {
  const parts = [];
  if (project) parts.push(`name:"projects/${quote(project)}/*"`);
  if (state) parts.push(`state="JOB_STATE_${state}"`);
  if (name) parts.push(`display_name:"${quote(name)}${name.includes("*") ? "" : "*"}"`);
  return parts.join(" AND ");
}

/** The projects the caller may pick from (asked once per token). */
let projectChoices = null;
onTokenChange(() => { projectChoices = null; });
function loadProjects() {
  projectChoices = projectChoices || api("/batchpredict/v1/defaults")
    .then((d) => d.projects || [])
    .catch(() => { projectChoices = null; return []; });
  return projectChoices;
}

const COLUMNS = [
  ["Job", ""], ["Model", ""], ["State", ""], ["Progress", ""], ["Succeeded", "num"],
  ["Failed", "num"], ["Incomplete", "num"], ["Duration", "num"], ["Created", ""], ["Ended", ""],
];

export function jobsView(root, params) {
  document.title = "Jobs · batchpredict";
  const state = STATES.includes(params.get("state")) ? params.get("state") : "";
  const name = params.get("name") || "";
  const project = params.get("project") || "";
  const pageSize = PAGE_SIZES.includes(Number(params.get("pageSize")))
    ? Number(params.get("pageSize")) : 25;
  const filter = buildFilter(state, name, project);
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
  const projectSelect = h("select", { name: "project" });
  const projectField = field("filter-project", "Project", projectSelect);
  function showProjects(projects) {
    const all = project && !projects.includes(project) ? [...projects, project].sort() : projects;
    replace(projectSelect, h("option", { value: "" }, "All projects"),
      all.map((p) => h("option", { value: p, selected: p === project }, p)));
    projectField.hidden = all.length < 2 && !project;
  }
  showProjects([]);
  loadProjects().then((projects) => { if (alive) showProjects(projects); });
  const form = h("form", { class: "toolbar", role: "search", "aria-label": "Filter jobs" },
    projectField,
    field("filter-state", "State", stateSelect),
    field("filter-name", "Name starts with", nameInput),
    field("filter-size", "Per page", sizeSelect),
    h("div", { class: "field" }, h("button", { type: "submit", class: "primary" }, "Apply")),
    filter ? h("div", { class: "field" }, h("a", { href: "/console/", "data-link": true, class: "button" }, "Clear")) : null);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = new URLSearchParams();
    if (projectSelect.value) q.set("project", projectSelect.value);
    if (stateSelect.value) q.set("state", stateSelect.value);
    if (nameInput.value.trim()) q.set("name", nameInput.value.trim());
    if (Number(sizeSelect.value) !== 25) q.set("pageSize", sizeSelect.value);
    const qs = q.toString();
    const focused = document.activeElement;
    go(`/console/${qs ? `?${qs}` : ""}`, { focusId: form.contains(focused) ? focused.id : null });
  });
  stateSelect.addEventListener("change", () => form.requestSubmit());
  projectSelect.addEventListener("change", () => form.requestSubmit());
  sizeSelect.addEventListener("change", () => form.requestSubmit());

  const tbody = h("tbody", { role: "rowgroup" });
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
      // Explicit roles: the narrow layout (display: grid on rows) would drop them in some browsers.
      h("table", { id: "jobs-table", role: "table" },
        h("caption", { class: "sr-only" }, "Batch prediction jobs"),
        h("thead", { role: "rowgroup" }, h("tr", { role: "row" },
          COLUMNS.map(([label, cls]) => h("th", { scope: "col", role: "columnheader", class: cls || null }, label)))),
        tbody)),
    h("nav", { class: "pager", "aria-label": "Pages" }, pageLabel, newer, older));

  function row(job) {
    const c = jobCounts(job);
    const { bar, text } = progressBar(job, { label: `Progress of ${job.displayName}` });
    const ran = jobDuration(job);
    const cells = [
      ["col-job", [
        h("a", { class: "job-link ellipsis", href: consoleUrl(job.name), "data-link": true, title: job.displayName }, job.displayName),
        ellipsis(`${jobId(job.name)} · ${job.name.split("/")[1]} · ${faceName(job.face)}`, job.name, { class: "muted small mono" })]],
      ["col-model", modelEl(job.model)],
      ["col-state", stateBadge(job.state)],
      ["col-progress progress", [bar, h("div", { class: "progress-text" }, text)]],
      ["num", job.completionStats ? fmtInt(c.succeeded) : "–"],
      ["num", job.completionStats ? fmtInt(c.failed) : "–"],
      ["num", job.completionStats ? fmtInt(c.incomplete) : "–"],
      ["num duration", ran === null ? "–" : h("span", {
        title: job.endTime ? "Ended − started" : "Running for (so far)",
      }, fmtDuration(ran))],
      ["when", timeEl(job.createTime)],
      ["when", timeEl(job.endTime)],
    ];
    return h("tr", { role: "row", dataset: { job: job.name } }, cells.map(([cls, content], i) =>
      h("td", { role: "cell", class: cls, "data-label": COLUMNS[i][0] }, content)));
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
      : h("tr", {}, h("td", { colspan: COLUMNS.length, class: "empty" }, filter
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
