"""The Gemini Developer API face: batches and Files (routes.py) and their JSON (resource.py)."""
