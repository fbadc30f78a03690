"""The body of a create call: a BatchPredictionJob as a client sends it, validated field by field.

Field names are camelCase as Vertex writes them; snake_case is accepted too, as protobuf JSON does.
A wrong type or a missing field is a 400 naming the field (`inputConfig.gcsSource.uris`), an
unknown field is a 400 in Google's words ("Unknown name ..."). Output-only fields (`name`,
`state`, `createTime`, ...) and settings that do not apply here (`dedicatedResources`, ...) are
accepted and ignored, as Vertex does; fields that would change the job's meaning but are not
implemented (`instanceConfig`, `encryptionSpec`, ...) are refused by name. BigQuery tables come in
through `bigquerySource.inputUri` and go out through `bigqueryDestination.outputUri`
(batchpredict/bigquery).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from batchpredict.errors import InvalidArgument
from batchpredict.server.labels import label_problem
from batchpredict.service import JobRequest

__all__ = ["JobSpec", "describe_validation_errors"]

#: Output-only fields of the resource and settings with no meaning here: accepted, ignored.
IGNORED_FIELDS = frozenset({
    "name", "state", "error", "createTime", "startTime", "endTime", "updateTime",
    "completionStats", "outputInfo", "partialFailures", "resourcesConsumed", "modelVersionId",
    "satisfiesPzs", "satisfiesPzi", "progress", "dedicatedResources",
    "manualBatchTuningParameters", "serviceAccount", "disableContainerLogging",
})
#: Fields of Vertex's BatchPredictionJob that batchpredict does not implement: refused by name.
UNSUPPORTED_FIELDS = frozenset({
    "instanceConfig", "modelParameters", "generateExplanation", "explanationSpec",
    "encryptionSpec", "unmanagedContainerModel", "modelMonitoringConfig",
})


class _Message(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        strict=True,
    )


class GcsSource(_Message):
    uris: list[str] = Field(
        min_length=1,
        description="JSONL files: local paths, gs://, s3:// or memory:// URIs; wildcards allowed. "
                    "A single string is one URI (as Vertex accepts, and its docs write it).",
    )

    @model_validator(mode="before")
    @classmethod
    def _one_uri_as_a_string(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("uris",):
                if isinstance(data.get(key), str):
                    data = {**data, key: [data[key]]}
        return data


class BigQuerySource(_Message):
    input_uri: str = Field(min_length=1, description="bq://PROJECT.DATASET.TABLE")


class InputConfig(_Message):
    instances_format: Literal["jsonl", "bigquery"] = "jsonl"
    gcs_source: GcsSource | None = None
    bigquery_source: BigQuerySource | None = Field(
        None, description='A table with a request column; instancesFormat "bigquery".'
    )


class GcsDestination(_Message):
    output_uri_prefix: str = Field(
        min_length=1, description="Where the prediction-model-<time>/ folder is written."
    )


class BigQueryDestination(_Message):
    output_uri: str = Field(
        min_length=1,
        description="bq://PROJECT.DATASET (a new predictions_<time> table) or a new table "
        "bq://PROJECT.DATASET.TABLE",
    )


class OutputConfig(_Message):
    predictions_format: Literal["jsonl", "bigquery"] = "jsonl"
    gcs_destination: GcsDestination | None = None
    bigquery_destination: BigQueryDestination | None = Field(
        None, description='The table to write; predictionsFormat "bigquery".'
    )


class JobSpec(_Message):
    """BatchPredictionJob, the fields a create call sets."""

    display_name: str = Field(min_length=1, max_length=128)
    model: str = Field(
        min_length=1,
        description="publishers/google/models/gemini-2.5-flash, a short name, or a registry name.",
    )
    input_config: InputConfig
    output_config: OutputConfig
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _vertex_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        """security: labels as Vertex allows them (server/labels.py)."""
        problem = label_problem(labels)
        if problem:
            raise PydanticCustomError("invalid_labels", "{problem}", {"problem": problem})
        return labels

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key in data:
            if key in UNSUPPORTED_FIELDS:
                raise PydanticCustomError(
                    "unsupported_field",
                    "{field} is not supported by batchpredict; remove it from the request.",
                    {"field": key},
                )
        return {k: v for k, v in data.items() if k not in IGNORED_FIELDS}

    def inputs(self) -> list[str]:
        config = self.input_config
        if config.bigquery_source is not None:
            if config.gcs_source is not None:
                raise InvalidArgument(
                    "inputConfig has both gcsSource and bigquerySource: give one of them."
                )
            if config.instances_format != "bigquery":
                raise InvalidArgument(
                    'inputConfig.instancesFormat must be "bigquery" with bigquerySource.'
                )
            return [config.bigquery_source.input_uri]
        if config.instances_format != "jsonl":
            raise InvalidArgument(
                'inputConfig.instancesFormat "bigquery" needs inputConfig.bigquerySource: '
                '{"bigquerySource": {"inputUri": "bq://PROJECT.DATASET.TABLE"}}.'
            )
        if config.gcs_source is None:
            raise InvalidArgument(
                "inputConfig.gcsSource is required: "
                '{"gcsSource": {"uris": ["gs://bucket/input.jsonl"]}}.'
            )
        for uri in config.gcs_source.uris:
            if uri.strip().lower().startswith("bq://"):
                raise InvalidArgument(
                    f"BigQuery sources ({uri}) go in inputConfig.bigquerySource.inputUri, with "
                    'instancesFormat "bigquery"; gcsSource.uris holds JSONL files.'
                )
        return config.gcs_source.uris

    def output_prefix(self) -> str:
        config = self.output_config
        if config.bigquery_destination is not None:
            if config.gcs_destination is not None:
                raise InvalidArgument(
                    "outputConfig has both gcsDestination and bigqueryDestination: give one."
                )
            if config.predictions_format != "bigquery":
                raise InvalidArgument(
                    'outputConfig.predictionsFormat must be "bigquery" with bigqueryDestination.'
                )
            return config.bigquery_destination.output_uri
        if config.predictions_format != "jsonl":
            raise InvalidArgument(
                'outputConfig.predictionsFormat "bigquery" needs outputConfig.bigqueryDestination'
                ': {"bigqueryDestination": {"outputUri": "bq://PROJECT.DATASET"}}.'
            )
        if config.gcs_destination is None:
            raise InvalidArgument(
                "outputConfig.gcsDestination is required: "
                '{"gcsDestination": {"outputUriPrefix": "gs://bucket/output"}}.'
            )
        prefix = config.gcs_destination.output_uri_prefix
        if prefix.strip().lower().startswith("bq://"):
            raise InvalidArgument(
                f"BigQuery destinations ({prefix}) go in outputConfig.bigqueryDestination."
                'outputUri, with predictionsFormat "bigquery"; gcsDestination takes a folder.'
            )
        return prefix

    def job_request(self) -> JobRequest:
        """What the job service is asked for."""
        return JobRequest(
            display_name=self.display_name,
            model=self.model,
            input_uris=self.inputs(),
            output_prefix=self.output_prefix(),
            labels=dict(self.labels),
        )


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """One message for FastAPI/pydantic validation errors, naming each field as the API does."""
    parts = []
    for e in errors:
        loc = [str(x) for x in e.get("loc", ()) if x not in ("body",)]
        where = loc[0] if loc and loc[0] in ("query", "path", "header") else None
        if where:
            loc = loc[1:]
        field = ".".join(loc)
        kind = e.get("type", "")
        if kind == "extra_forbidden":
            parent = ".".join(loc[:-1])
            at = f" at '{parent}'" if parent else ""
            parts.append(f'Invalid JSON payload received. Unknown name "{loc[-1]}"{at}: '
                         "Cannot find field.")
        elif kind == "missing" and field:
            parts.append(f"{field} is required.")
        elif kind == "missing":
            parts.append("The request body is required: a BatchPredictionJob as JSON.")
        elif kind == "unsupported_field":
            parts.append(str(e.get("msg", "")))
        elif kind == "json_invalid":
            error = (e.get("ctx") or {}).get("error", "not JSON")
            at = f" at position {loc[0]}" if loc else ""
            parts.append(f"Invalid JSON payload received: {error}{at}.")
        elif not field:
            parts.append(
                "The request body must be a JSON object (a BatchPredictionJob), sent with "
                "Content-Type: application/json."
            )
        else:
            msg = str(e.get("msg", "invalid"))
            parts.append(f"Invalid value at '{field}': {msg}." if field else f"{msg}.")
    return " ".join(parts) or "The request is not valid."
