"""`batchpredict run --executor ray` as a user runs it: no cluster address, so a single-node
cluster is started for the job, its rows on two actors."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import text_request, write_jsonl
from tests.scale.conftest import assert_every_row_once_in_order


def test_the_cli_starts_a_ray_cluster_for_a_job_without_an_address(run_cli,
                                                                    tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text('[[models]]\nname = "pids"\nbackend = "python"\n'
                      'class = "tests.doubles.instant:ProcessNamingTestDouble"\n'
                      "num_cpus = 0.5\n[models.options]\nbatch_size = 4\n")
    src = write_jsonl(tmp_path / "in.jsonl",
                      [{"key": i, "request": text_request(f"row {i}")} for i in range(40)])
    done = run_cli("run", str(src), "--output", str(tmp_path / "out"), "-m", "pids", "-q",
                   "--executor", "ray", "--workers", "2",
                   env={"BATCHPREDICT_MODELS_FILE": str(models), "BATCHPREDICT_CHUNK_ROWS": "5",
                        "RAY_ADDRESS": ""}, timeout=240)
    assert done.returncode == 0, done.stderr
    lines = assert_every_row_once_in_order(tmp_path / "out", 40)
    assert len({line["response"]["modelVersion"] for line in lines}) == 2  # two actors
