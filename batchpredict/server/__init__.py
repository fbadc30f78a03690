"""The batchpredict server: Vertex's batch prediction REST API over the job store and scheduler."""

from batchpredict.server.app import create_app, serve

__all__ = ["create_app", "serve"]
