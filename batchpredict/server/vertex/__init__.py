"""The Vertex face: Vertex AI's batchPredictionJobs REST API over the one job service."""
