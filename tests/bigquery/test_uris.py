"""bq:// URIs without an emulator: parsing, the data policy's BigQuery prefixes, the REST fields
that carry tables, and how a job with BigQuery input and output renders as Vertex JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from batchpredict.bigquery import tables
from batchpredict.bigquery.publish import plan_output
from batchpredict.client import job_body
from batchpredict.config import Settings
from batchpredict.errors import InvalidArgument, PermissionDenied
from batchpredict.jobs import Job, JobState, LineFormat
from batchpredict.policy import DataPolicies
from batchpredict.server.vertex.job_spec import JobSpec
from batchpredict.server.vertex.resource import job_from_resource, job_resource


def test_input_and_output_uris_parse() -> None:
    assert tables.parse_input_uri("bq://p.d.t") == tables.TableRef("p", "d", "t")
    assert tables.parse_input_uri("bq://example.com:proj.d_1.t-2") == tables.TableRef(
        "example.com:proj", "d_1", "t-2")
    assert tables.parse_input_uri("bq://p.d.t@123:4") == tables.TableRef("p", "d", "t")
    assert tables.parse_output_uri("bq://p.d") == tables.TableRef("p", "d")
    assert tables.parse_output_uri("bq://p.d.t") == tables.TableRef("p", "d", "t")
    assert tables.canonical("bq://p.d.") == "bq://p.d"


@pytest.mark.parametrize(("uri", "parse"), [
    ("bq://p.d", tables.parse_input_uri),
    ("bq://p", tables.parse_output_uri),
    ("bq://p.d.t.x.y", tables.parse_input_uri),
    ("bq://p.d/t", tables.parse_input_uri),
    ("bq://", tables.parse_output_uri),
    ("gs://b/x", tables.parse_input_uri),
])
def test_malformed_uris_say_the_form(uri: str, parse) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse(uri)
    assert uri in info.value.message and "bq://PROJECT.DATASET" in info.value.message


def test_prefixes_are_whole_parts() -> None:
    assert tables.table_under("bq://p.d.t", "bq://p.d")
    assert tables.table_under("bq://p.d.t", "bq://p.d.")
    assert tables.table_under("bq://p.d.t", "bq://p")
    assert tables.table_under("bq://p.d", "bq://p.d")
    assert not tables.table_under("bq://p.d_old.t", "bq://p.d")
    assert not tables.table_under("bq://p.d", "bq://p.d.t")
    assert not tables.table_under("bq://q.d.t", "bq://p")
    assert not tables.table_under("/srv/d/t", "bq://p.d")


def policies(tmp_path: Path, restricted: bool) -> DataPolicies:
    projects = tmp_path / "projects.toml"
    projects.write_text('[projects.a]\nread = ["bq://p.shared."]\nwrite = ["bq://p.team_a"]\n')
    return DataPolicies(Settings(data_dir=str(tmp_path / "data"), projects_file=str(projects)),
                        restricted)


def test_the_data_policy_grants_tables_by_prefix(tmp_path: Path) -> None:
    a = policies(tmp_path, restricted=True).for_project("a")
    assert a.check_read("bq://p.shared.t@1:2") == "bq://p.shared.t"
    assert a.check_read("bq://p.team_a.t") == "bq://p.team_a.t"  # what it writes, it reads
    assert a.check_write("bq://p.team_a") == "bq://p.team_a"
    assert a.check_write("bq://p.team_a.out") == "bq://p.team_a.out"
    for uri, check in (("bq://p.shared_old.t", a.check_read), ("bq://p.shared.t", a.check_write),
                       ("bq://q.team_a.t", a.check_read), ("bq://p.team_a_old", a.check_write)):
        with pytest.raises(PermissionDenied) as info:
            check(uri)
        assert "Project a may not" in info.value.message and uri in info.value.message
        assert 'bq://PROJECT.DATASET' in info.value.message
    b = policies(tmp_path, restricted=True).for_project("b")
    with pytest.raises(PermissionDenied):
        b.check_read("bq://p.team_a.t")
    open_b = policies(tmp_path, restricted=False).for_project("b")
    assert open_b.check_write("bq://anything.goes") == "bq://anything.goes"


def test_a_bad_bigquery_grant_is_refused(tmp_path: Path) -> None:
    projects = tmp_path / "projects.toml"
    projects.write_text('[projects.a]\nread = ["bq://p.d/t"]\n')
    with pytest.raises(InvalidArgument, match="BigQuery data policy URI"):
        DataPolicies(Settings(data_dir=str(tmp_path), projects_file=str(projects)), True)


def test_a_dataset_destination_gets_a_predictions_table_named_as_vertex_does() -> None:
    now = datetime(2024, 11, 1, 18, 13, 16, 826123, tzinfo=UTC)
    job = Job("x", "m", ["bq://p.d.t"], "bq://p.d")
    plan_output(job, "/outputs/local", now)
    assert job.output_table == "bq://p.d.predictions_2024_11_01T18_13_16_826Z"
    assert job.output_dir == "/outputs/local/bigquery/prediction-model-2024-11-01T18:13:16.826123Z"
    named = Job("x", "m", ["/in.jsonl"], "bq://p.d.mine")
    plan_output(named, "/o", now)
    assert named.output_table == "bq://p.d.mine"
    files_only = Job("x", "m", ["bq://p.d.t"], "/out")
    plan_output(files_only, "/o", now)
    assert files_only.output_table is None and files_only.output_dir is None
    openai = Job("x", "m", ["bq://p.d.t"], "/out", line_format=LineFormat.OPENAI)
    with pytest.raises(InvalidArgument, match="BigQuery tables hold Vertex's rows"):
        plan_output(openai, "/o", now)


def spec(**configs: object) -> JobSpec:
    return JobSpec.model_validate({"displayName": "x", "model": "m", **configs})


def test_job_spec_takes_bigquery_source_and_destination() -> None:
    s = spec(inputConfig={"instancesFormat": "bigquery",
                          "bigquerySource": {"inputUri": "bq://p.d.t"}},
             outputConfig={"predictionsFormat": "bigquery",
                           "bigqueryDestination": {"outputUri": "bq://p.d"}})
    assert s.inputs() == ["bq://p.d.t"] and s.output_prefix() == "bq://p.d"


@pytest.mark.parametrize(("configs", "words"), [
    ({"inputConfig": {"instancesFormat": "jsonl", "bigquerySource": {"inputUri": "bq://p.d.t"}}},
     'instancesFormat must be "bigquery"'),
    ({"inputConfig": {"instancesFormat": "bigquery", "gcsSource": {"uris": ["gs://b/x"]}}},
     "needs inputConfig.bigquerySource"),
    ({"inputConfig": {"gcsSource": {"uris": ["bq://p.d.t"]}}},
     "inputConfig.bigquerySource.inputUri"),
])
def test_job_spec_refuses_mixed_bigquery_fields(configs: dict, words: str) -> None:
    s = spec(outputConfig={"gcsDestination": {"outputUriPrefix": "/tmp/o"}}, **configs)
    with pytest.raises(InvalidArgument) as info:
        s.inputs()
    assert words in info.value.message


def test_job_with_bigquery_io_renders_vertex_fields_and_back() -> None:
    job = Job("x", "m", ["bq://p.d.t"], "bq://p.d", id=3, output_dir="/staging/x",
              output_table="bq://p.d.predictions_2024_11_01T18_13_16_826Z")
    assert "outputInfo" not in job_resource(job)  # named at create, shown once it runs
    job.state = JobState.JOB_STATE_RUNNING
    api = job_resource(job)
    assert api["inputConfig"] == {"instancesFormat": "bigquery",
                                  "bigquerySource": {"inputUri": "bq://p.d.t"}}
    assert api["outputConfig"] == {"predictionsFormat": "bigquery",
                                   "bigqueryDestination": {"outputUri": "bq://p.d"}}
    assert api["outputInfo"] == {"bigqueryOutputDataset": "bq://p.d",
                                 "bigqueryOutputTable": "predictions_2024_11_01T18_13_16_826Z"}
    back = job_from_resource(api)
    assert (back.input_uris, back.output_prefix, back.output_table) == (
        job.input_uris, job.output_prefix, job.output_table)
    assert Job.from_record(job.to_record()).output_table == job.output_table
    body = job_body(["bq://p.d.t"], "bq://p.d", "m", "n")  # the CLI's `jobs create --server`
    assert (body["inputConfig"], body["outputConfig"]) == (api["inputConfig"], api["outputConfig"])
