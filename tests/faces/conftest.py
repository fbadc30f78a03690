"""Fixtures of the faces tests: the real-server fixtures of tests/server, OpenAI-format lines."""

from __future__ import annotations

from typing import Any

from tests.server.conftest import (  # noqa: F401  (fixtures)
    make_input,
    make_settings,
    models_file,
    server,
    start_server,
)


def chat_line(custom_id: str, text: str, model: str = "fast-model", **body: Any
              ) -> dict[str, Any]:
    """One OpenAI batch input line: a chat completion request."""
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": text}], **body}}
