"""The OpenAI Batch API face (routes.py) and its JSON (resource.py)."""
