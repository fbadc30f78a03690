"""A job's `labels`, checked as Vertex checks them: at most 64; keys and values at most 63
characters of lowercase letters, digits, `_` and `-`; keys start with a lowercase letter and are
not empty. Vertex also accepts international lowercase letters; batchpredict accepts ASCII only
(a key such as `équipe` is refused with a message saying so).
"""

from __future__ import annotations

import re

__all__ = ["MAX_LABELS", "label_problem"]

MAX_LABELS = 64
MAX_LENGTH = 63
_KEY = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_VALUE = re.compile(r"[a-z0-9_-]{0,63}")
_RULE = "lowercase letters (a-z), digits, '_' and '-', at most 63 characters"


def label_problem(labels: dict[str, str]) -> str | None:
    """Why `labels` are not valid, or None."""
    if len(labels) > MAX_LABELS:
        return f"a job has at most {MAX_LABELS} labels; this one has {len(labels)}"
    for key, value in labels.items():
        if not _KEY.fullmatch(key):
            return (f"label key {key[:80]!r} must start with a lowercase letter and hold only "
                    f"{_RULE}")
        if not _VALUE.fullmatch(value):
            return f"the value of label {key!r} ({value[:80]!r}) may hold only {_RULE}"
    return None
