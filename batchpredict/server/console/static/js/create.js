// Create a job. The input is a JSONL file uploaded to the server (POST /batchpredict/v1/uploads)
// or URIs the server can read; either way it is checked line by line first
// (uploads:validate / inputs:validate, the runner's own parser) and a bad line is shown with its
// line number. Then POST /v1/projects/P/locations/L/batchPredictionJobs, as any client would.

import { api, ApiError } from "./api.js";
import { go } from "./nav.js";
import { consoleUrl, errorBox, field, fmtBytes, fmtInt, h, replace } from "./ui.js";

const GLOB = /[*?[]/;

function globToRegExp(pattern) {
  const body = pattern.replace(/[.+^${}()|\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${body}$`);
}

function defaultDisplayName(fileName) {
  const stem = (fileName || "job").replace(/\.[^.]*$/, "").replace(/[^A-Za-z0-9_-]+/g, "-").slice(0, 60);
  const d = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `${stem || "job"}-${d.getFullYear()}${pad(d.getMonth() + 1)}${pad(d.getDate())}-` +
    `${pad(d.getHours())}${pad(d.getMinutes())}${pad(d.getSeconds())}`;
}

/** "team=ml\nowner=ana" -> {team: "ml", owner: "ana"}; throws naming a bad line. */
export function parseLabels(text) {
  const labels = {};
  text.split(/\n|,/).map((l) => l.trim()).filter(Boolean).forEach((line) => {
    const [key, ...rest] = line.split("=");
    const value = rest.join("=").trim();
    if (!key.trim() || !rest.length) {
      throw new Error(`Label "${line}" is not key=value.`);
    }
    labels[key.trim()] = value;
  });
  return labels;
}

export function createView(root) {
  document.title = "Create job · batchpredict";
  let report = null; // the last validation report of the current input
  let checking = null;

  const alert = h("div", { id: "create-errors" });
  // -- input --------------------------------------------------------------------------
  const modeUpload = h("input", { type: "radio", name: "mode", value: "upload", checked: true });
  const modeUri = h("input", { type: "radio", name: "mode", value: "uri" });
  const fileInput = h("input", {
    type: "file", name: "file", accept: ".jsonl,.json,.txt,application/jsonl,application/json,text/plain",
  });
  const uriInput = h("textarea", {
    name: "uris", rows: 3, spellcheck: "false",
    placeholder: "gs://bucket/input.jsonl\n/data/batch/*.jsonl",
  });
  const checkButton = h("button", { type: "button" }, "Check input");
  const reportEl = h("div", { class: "report", id: "input-report", "aria-live": "polite" });
  const allowInvalid = h("input", { type: "checkbox", name: "allowInvalid", id: "allow-invalid" });
  const allowBox = h("p", { hidden: true },
    h("label", { class: "check", for: "allow-invalid" }, allowInvalid,
      "Submit anyway: each invalid line becomes a failed row of the job"));
  const uploadPanel = field("input-file", "JSONL file", fileInput,
    'One {"request": GenerateContentRequest} per line; other fields (such as "key") are echoed on the output line.');
  const uriPanel = h("div", { hidden: true },
    field("input-uris", "Input URIs", uriInput, "One per line: local paths, gs://, s3://; wildcards allowed."),
    h("p", {}, checkButton));

  // -- model, output, names -------------------------------------------------------------
  const modelSelect = h("select", { name: "model", required: true }, h("option", { value: "" }, "Loading models…"));
  const modelHint = h("p", { class: "hint", id: "model-select-hint" });
  const modelName = h("input", { type: "text", name: "modelName", spellcheck: "false", autocomplete: "off" });
  const modelNameField = field("model-name", "Model name", modelName);
  modelNameField.hidden = true;
  const outputInput = h("input", { type: "text", name: "output", required: true, spellcheck: "false" });
  const nameInput = h("input", { type: "text", name: "displayName", required: true, maxlength: 128 });
  const labelsInput = h("textarea", { name: "labels", rows: 2, spellcheck: "false", placeholder: "team=ml\nowner=ana" });
  const projectInput = h("input", { type: "text", name: "project", spellcheck: "false" });
  const locationInput = h("input", { type: "text", name: "location", value: "us-central1", spellcheck: "false" });
  const submit = h("button", { type: "submit", class: "primary", id: "create-submit" }, "Create job");

  const form = h("form", { id: "create-form", novalidate: true },
    h("div", { class: "form-cols" },
      h("div", {},
        h("fieldset", {},
          h("legend", {}, "Input"),
          h("div", { class: "choice", role: "radiogroup", "aria-label": "Input source" },
            h("label", {}, modeUpload, "Upload a JSONL file"),
            h("label", {}, modeUri, "Use files the server can read")),
          uploadPanel, uriPanel, reportEl, allowBox)),
      h("div", {},
        h("fieldset", {},
          h("legend", {}, "Job"),
          h("div", { class: "field" }, h("label", { for: "model-select" }, "Model"), modelSelect, modelHint),
          modelNameField,
          field("output-prefix", "Output prefix", outputInput,
            "predictions.jsonl is written to PREFIX/prediction-model-<time>/: a folder, gs://… or s3://…"),
          field("display-name", "Display name", nameInput),
          field("labels", "Labels (optional)", labelsInput, "key=value, one per line."),
          h("details", {},
            h("summary", {}, "Project and location"),
            field("project", "Project", projectInput, "Jobs are listed and secured per project."),
            field("location", "Location", locationInput))))),
    h("div", { class: "actions" }, submit,
      h("a", { href: "/console/", "data-link": true, class: "button" }, "Cancel")));
  modelSelect.id = "model-select";
  modelSelect.setAttribute("aria-describedby", "model-select-hint");

  replace(root,
    h("div", { class: "crumbs" }, h("a", { href: "/console/", "data-link": true }, "Jobs"), " › Create"),
    h("div", { class: "page-head" },
      h("div", {}, h("h1", { tabindex: -1 }, "Create a batch prediction job"),
        h("p", { class: "sub muted" }, "Every line is checked before the job is created, with the same parser the runner uses."))),
    alert, h("div", { class: "panel" }, form));

  // -- behaviour ------------------------------------------------------------------------
  const mode = () => (modeUri.checked ? "uri" : "upload");
  function setMode() {
    uploadPanel.hidden = mode() !== "upload";
    uriPanel.hidden = mode() !== "uri";
    resetReport();
  }
  modeUpload.addEventListener("change", setMode);
  modeUri.addEventListener("change", setMode);

  function resetReport() {
    report = null;
    reportEl.replaceChildren();
    allowBox.hidden = true;
    allowInvalid.checked = false;
  }

  function showReport(r) {
    report = r;
    const files = r.files.length > 1 ? ` in ${r.files.length} files` : "";
    if (!r.invalidRowCount) {
      replace(reportEl, h("div", { class: "callout ok", id: "input-ok" },
        h("p", {}, h("strong", {}, `${fmtInt(r.rowCount)} rows${files}, all valid`),
          ` (${fmtBytes(r.sizeBytes)}${r.truncated ? ", checked the first rows only" : ""}).`)));
      allowBox.hidden = true;
      return;
    }
    const more = r.invalidRowCount - r.problems.length;
    replace(reportEl, h("div", { class: "callout error", id: "input-bad" },
      h("p", {}, h("strong", {}, `${fmtInt(r.invalidRowCount)} of ${fmtInt(r.rowCount)} ${r.rowCount === 1 ? "line" : "lines"} ${r.invalidRowCount === 1 ? "is not a valid request" : "are not valid requests"}.`),
        " Fix them and choose the file again, or submit anyway."),
      h("div", { class: "table-wrap" },
        h("table", { id: "input-problems" },
          h("caption", { class: "sr-only" }, "Invalid lines"),
          h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Line"), h("th", { scope: "col" }, "Problem"))),
          h("tbody", {}, r.problems.map((p) => h("tr", {},
            h("td", { class: "line" }, r.files.length > 1 ? `${p.file}:${p.line}` : String(p.line)),
            h("td", {}, p.message)))))),
      more > 0 ? h("p", {}, `…and ${fmtInt(more)} more.`) : null));
    allowBox.hidden = false;
  }

  async function check() {
    resetReport();
    replace(reportEl, h("p", { class: "muted" }, "Checking every line…"));
    try {
      if (mode() === "upload") {
        const file = fileInput.files[0];
        if (!file) { reportEl.replaceChildren(); return null; }
        const fd = new FormData();
        fd.append("file", file);
        showReport(await api("/batchpredict/v1/uploads:validate", { method: "POST", form: fd }));
      } else {
        const uris = uriInput.value.split("\n").map((s) => s.trim()).filter(Boolean);
        if (!uris.length) { reportEl.replaceChildren(); return null; }
        showReport(await api("/batchpredict/v1/inputs:validate", { method: "POST", json: { uris } }));
      }
      return report;
    } catch (err) {
      replace(reportEl, errorBox(err));
      return null;
    }
  }

  fileInput.addEventListener("change", () => {
    const file = fileInput.files[0];
    if (file && (!nameInput.value || nameInput.dataset.auto === "1")) {
      nameInput.value = defaultDisplayName(file.name);
      nameInput.dataset.auto = "1";
    }
    checking = check();
  });
  nameInput.addEventListener("input", () => { nameInput.dataset.auto = "0"; });
  uriInput.addEventListener("input", resetReport);
  checkButton.addEventListener("click", () => { checking = check(); });

  let models = [];
  function onModelChange() {
    const entry = models.find((m) => m.name === modelSelect.value);
    modelHint.textContent = entry ? `${entry.backend} backend${entry.description ? ` · ${entry.description}` : ""}` : "";
    const glob = entry && GLOB.test(entry.name);
    modelNameField.hidden = !glob;
    if (glob) {
      modelName.placeholder = entry.name.replace(/\*/g, "…");
      modelName.setAttribute("aria-describedby", "model-select-hint");
    }
  }
  modelSelect.addEventListener("change", onModelChange);

  async function loadChoices() {
    try {
      const [reg, defaults] = await Promise.all([
        api("/batchpredict/v1/models"), api("/batchpredict/v1/defaults"),
      ]);
      models = reg.models || [];
      replace(modelSelect, models.map((m) => h("option", { value: m.name }, m.name)));
      onModelChange();
      if (!outputInput.value) outputInput.value = defaults.outputUriPrefix || "";
      projectInput.placeholder = defaults.project || "";
      if (!projectInput.value) projectInput.value = defaults.project || "";
      locationInput.value = locationInput.value || defaults.location || "us-central1";
    } catch (err) {
      replace(alert, errorBox(err));
    }
  }
  loadChoices();

  function invalid(control, message) {
    control.setAttribute("aria-invalid", "true");
    control.focus();
    throw new ApiError(400, { error: { message, status: "INVALID_ARGUMENT" } });
  }

  function readForm() {
    form.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
    const entry = models.find((m) => m.name === modelSelect.value);
    if (!entry) invalid(modelSelect, "Choose a model.");
    let model = entry.name;
    if (GLOB.test(entry.name)) {
      model = modelName.value.trim();
      if (!model) invalid(modelName, `Give a model name matching ${entry.name}.`);
      if (!globToRegExp(entry.name).test(model.split("/").pop()) && !globToRegExp(entry.name).test(model)) {
        invalid(modelName, `${model} does not match ${entry.name}.`);
      }
    }
    const output = outputInput.value.trim();
    if (!output) invalid(outputInput, "Give an output prefix: a folder, gs://bucket/path or s3://bucket/path.");
    const displayName = nameInput.value.trim();
    if (!displayName) invalid(nameInput, "Give the job a display name.");
    let labels;
    try { labels = parseLabels(labelsInput.value); } catch (e) { invalid(labelsInput, e.message); }
    const project = projectInput.value.trim() || projectInput.placeholder;
    const loc = locationInput.value.trim() || "us-central1";
    return { model, output, displayName, labels, project, location: loc };
  }

  async function inputUris() {
    if (checking) await checking;
    if (mode() === "upload" && !fileInput.files[0]) invalid(fileInput, "Choose a JSONL file to upload.");
    if (mode() === "uri" && !uriInput.value.trim()) invalid(uriInput, "Give at least one input URI.");
    if (!report) report = await check();
    if (!report) throw new ApiError(400, { error: { message: "The input could not be checked; see above.", status: "INVALID_ARGUMENT" } });
    if (report.invalidRowCount && !allowInvalid.checked) {
      allowInvalid.focus();
      throw new ApiError(400, { error: {
        message: report.invalidRowCount === 1
          ? `1 line of the input is not a valid request (listed below the input). Fix it, or tick "Submit anyway".`
          : `${report.invalidRowCount} lines of the input are not valid requests (listed below the input). Fix them, or tick "Submit anyway".`,
        status: "INVALID_ARGUMENT",
      } });
    }
    if (mode() === "uri") return uriInput.value.split("\n").map((s) => s.trim()).filter(Boolean);
    const fd = new FormData();
    fd.append("file", fileInput.files[0]);
    const q = allowInvalid.checked ? "?allowInvalidLines=true" : "";
    const stored = await api(`/batchpredict/v1/uploads${q}`, { method: "POST", form: fd });
    return [stored.uri];
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    alert.replaceChildren();
    submit.disabled = true;
    submit.setAttribute("aria-busy", "true");
    submit.textContent = "Creating…";
    try {
      const f = readForm();
      const uris = await inputUris();
      const body = {
        displayName: f.displayName,
        model: f.model,
        inputConfig: { instancesFormat: "jsonl", gcsSource: { uris } },
        outputConfig: { predictionsFormat: "jsonl", gcsDestination: { outputUriPrefix: f.output } },
      };
      if (Object.keys(f.labels).length) body.labels = f.labels;
      const parent = `projects/${encodeURIComponent(f.project)}/locations/${encodeURIComponent(f.location)}`;
      const job = await api(`/v1/${parent}/batchPredictionJobs`, { method: "POST", json: body });
      go(consoleUrl(job.name));
    } catch (err) {
      replace(alert, errorBox(err));
      alert.scrollIntoView({ block: "nearest" });
    } finally {
      submit.disabled = false;
      submit.removeAttribute("aria-busy");
      submit.textContent = "Create job";
    }
  });

  return () => {};
}
