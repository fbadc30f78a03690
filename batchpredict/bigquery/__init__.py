"""BigQuery tables as a job's input and output, as Vertex uses them (`bq://` URIs).

    client.py   one client per project (ADC, or BIGQUERY_EMULATOR_HOST), errors made ours
    tables.py   URIs, the checks of input and output tables, reading an input table's rows
    publish.py  the output table: its columns, and publishing committed chunks exactly once

Where it plugs in: the data gate checks tables at create (data_gate.py, under the project's data
policy, policy.py), the job service names a job's output table (`publish.plan_output`), input.py
reads a table's rows, and the runner's chunked output is a `publish.TableOutput`
(`output.job_output`) that copies each committed chunk into the table.
"""

from batchpredict.bigquery.tables import is_table

__all__ = ["is_table"]
