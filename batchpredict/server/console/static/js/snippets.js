// The same job from code: the CLI, the google-genai SDK (unmodified, pointed at this server) and
// curl against the REST API. Tokens are never written into a snippet: they read
// $BATCHPREDICT_TOKEN.

const sh = (s) => `'${String(s).replace(/'/g, "'\\''")}'`;
const py = (s) => JSON.stringify(String(s));

function parts(job) {
  const [, project, , location] = job.name.split("/");
  return {
    project,
    location,
    // a BigQuery job names one table in and a dataset or table out
    uris: job.inputConfig.gcsSource ? job.inputConfig.gcsSource.uris
      : [job.inputConfig.bigquerySource.inputUri],
    prefix: job.outputConfig.gcsDestination ? job.outputConfig.gcsDestination.outputUriPrefix
      : job.outputConfig.bigqueryDestination.outputUri,
  };
}

export function cliSnippet(job, origin) {
  const { project, location, uris, prefix } = parts(job);
  const labels = Object.entries(job.labels || {}).map(([k, v]) => `  --label ${sh(`${k}=${v}`)} \\`);
  return [
    `export BATCHPREDICT_SERVER=${sh(origin)}  # and BATCHPREDICT_TOKEN, if the server needs one`,
    "",
    "# Create the same job:",
    `batchpredict jobs create ${uris.map(sh).join(" ")} \\`,
    `  --output ${sh(prefix)} \\`,
    `  --model ${sh(job.model)} \\`,
    `  --display-name ${sh(job.displayName)} \\`,
    ...labels,
    `  --project ${sh(project)} --location ${sh(location)}`,
    "",
    "# Follow this job until it ends:",
    `batchpredict jobs wait ${sh(job.name)}`,
  ].join("\n");
}

export function sdkSnippet(job, origin) {
  const { project, location, uris, prefix } = parts(job);
  const lines = [
    "import os",
    "",
    "import google.oauth2.credentials",
    "from google import genai",
    "from google.genai import types",
    "",
    "client = genai.Client(",
    "    vertexai=True,",
    `    project=${py(project)},`,
    `    location=${py(location)},`,
    "    credentials=google.oauth2.credentials.Credentials(",
    '        token=os.environ.get("BATCHPREDICT_TOKEN", "none")),',
    `    http_options=types.HttpOptions(base_url=${py(origin)}),`,
    ")",
    "job = client.batches.create(",
    `    model=${py(job.model)},`,
    job.inputConfig.bigquerySource ? `    src=${py(uris[0])},`
      : `    src=types.BatchJobSource(format="jsonl", gcs_uri=[${uris.map(py).join(", ")}]),`,
    "    config=types.CreateBatchJobConfig(",
    `        display_name=${py(job.displayName)},`,
    job.outputConfig.bigqueryDestination ? `        dest=${py(prefix)},`
      : `        dest=types.BatchJobDestination(format="jsonl", gcs_uri=${py(prefix)}),`,
    "    ),",
    ")",
    "print(job.name, job.state)",
    "",
    "# Follow this job:",
    `print(client.batches.get(name=${py(job.name)}).state)`,
  ];
  if (job.labels && Object.keys(job.labels).length) {
    lines.push("# Labels: the SDK's CreateBatchJobConfig has none; set them with the REST call.");
  }
  return lines.join("\n");
}

export function curlSnippet(job, origin) {
  const { project, location } = parts(job);
  const body = {
    displayName: job.displayName,
    model: job.model,
    inputConfig: job.inputConfig,
    outputConfig: job.outputConfig,
  };
  if (job.labels && Object.keys(job.labels).length) body.labels = job.labels;
  const auth = '-H "Authorization: Bearer $BATCHPREDICT_TOKEN"';
  return [
    "# Create the same job:",
    `curl -sS -X POST ${auth} -H 'Content-Type: application/json' \\`,
    `  ${sh(`${origin}/v1/projects/${project}/locations/${location}/batchPredictionJobs`)} \\`,
    `  -d ${sh(JSON.stringify(body, null, 2))}`,
    "",
    "# This job, its first failed rows, and its predictions:",
    `curl -sS ${auth} ${sh(`${origin}/v1/${job.name}`)}`,
    `curl -sS ${auth} ${sh(`${origin}/batchpredict/v1/${job.name}/failedRows?pageSize=5`)}`,
    `curl -sS ${auth} -o predictions.jsonl ${sh(`${origin}/batchpredict/v1/${job.name}/predictions.jsonl`)}`,
  ].join("\n");
}
