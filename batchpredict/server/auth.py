"""Who may call the server, and which projects' jobs each caller may see.

Access tokens come from configuration: `BATCHPREDICT_TOKENS_FILE` (TOML or JSON) and/or
`BATCHPREDICT_TOKENS`. Each token allows a set of projects ("*": every project). A request presents
its token as `Authorization: Bearer TOKEN` (what the google-genai SDK sends in Vertex mode), as an
API key in `x-goog-api-key` (express mode) or as `?key=TOKEN`.

    # tokens.toml                                 # tokens.json
    [tokens]                                      {"tokens": {
    "tok-ml" = ["team-ml"]                          "tok-ml": ["team-ml"],
    "tok-admin" = "*"                               "tok-admin": "*",
    [tokens."tok-web"]                              "tok-web": {"projects": ["web", "shared"],
    projects = ["web", "shared"]                                "default_project": "web"}}}
    default_project = "web"

    BATCHPREDICT_TOKENS="tok-ml=team-ml;tok-admin=*"

A caller's default project (express mode has no project in its paths) is `default_project`, else
the first project it lists, else `Settings.default_project` for "*" tokens.

Without any token configured the server is open, but only to this machine: it answers loopback
clients only, with or without a token, and `batchpredict serve` refuses to listen elsewhere.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import tomllib
from typing import Any

from batchpredict.config import Settings
from batchpredict.errors import InvalidArgument, PermissionDenied, Unauthenticated
from batchpredict.service import Caller

__all__ = ["AccessPolicy", "Caller", "is_loopback"]

HOW_TO_CONFIGURE = (
    "Configure access tokens: BATCHPREDICT_TOKENS='TOKEN=PROJECT[,PROJECT...]' (\"*\" for every "
    "project), or BATCHPREDICT_TOKENS_FILE=tokens.toml holding [tokens] TOKEN = [\"PROJECT\"]."
)


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class AccessPolicy:
    """Maps a request's token to a `Caller`."""

    def __init__(self, tokens: dict[str, Caller], default_project: str) -> None:
        self.tokens = tokens
        self.default_project = default_project
        self._open = Caller(None, default_project)

    @property
    def is_open(self) -> bool:
        """No tokens configured: loopback clients only, all of them allowed everything."""
        return not self.tokens

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        entries: dict[str, Any] = {}
        if settings.tokens_file:
            entries.update(_read_tokens_file(settings.tokens_file))
        if settings.tokens:
            entries.update(_parse_tokens_env(settings.tokens))
        tokens = {
            token: _caller(token, spec, settings.default_project, settings.tokens_file)
            for token, spec in entries.items()
        }
        return cls(tokens, settings.default_project)

    def authenticate(self, headers: Any, query: Any, client_host: str | None) -> Caller:
        """The caller a request stands for, or Unauthenticated / PermissionDenied."""
        token = _token_of(headers, query)
        if self.is_open:
            if not is_loopback(client_host):
                raise PermissionDenied(
                    "This server has no access tokens configured, so it answers only requests "
                    f"from this machine. {HOW_TO_CONFIGURE}"
                )
            return self._open
        if not token:
            raise Unauthenticated(
                "This server needs an access token: send 'Authorization: Bearer TOKEN' or "
                "'x-goog-api-key: TOKEN' (batchpredict jobs ... --token TOKEN)."
            )
        found: Caller | None = None
        for known, caller in self.tokens.items():  # compare all: no early exit to time
            if hmac.compare_digest(known.encode(), token.encode()):
                found = caller
        if found is None:
            raise Unauthenticated("The access token is not valid for this server.")
        return found


def _token_of(headers: Any, query: Any) -> str | None:
    auth = headers.get("authorization") or ""
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return str(value.strip())
    key = headers.get("x-goog-api-key") or query.get("key")
    return str(key) if key else None


def _read_tokens_file(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InvalidArgument(
            f"Cannot read the tokens file {path} (BATCHPREDICT_TOKENS_FILE): {exc.strerror}."
        ) from None
    try:
        data = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "JSON" if path.endswith(".json") else "TOML"
        raise InvalidArgument(f"The tokens file {path} is not valid {kind}: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("tokens"), dict):
        data = data["tokens"]
    if not isinstance(data, dict):
        raise InvalidArgument(
            f"The tokens file {path} must map tokens to projects. {HOW_TO_CONFIGURE}"
        )
    return data


def _parse_tokens_env(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in filter(None, (e.strip() for e in text.split(";"))):
        token, sep, projects = entry.partition("=")
        if not sep or not token.strip() or not projects.strip():
            raise InvalidArgument(
                f"BATCHPREDICT_TOKENS entry {entry!r} is not TOKEN=PROJECT[,PROJECT...]. "
                "Separate entries with ';' and use '*' to allow every project."
            )
        out[token.strip()] = [p.strip() for p in projects.split(",") if p.strip()]
    return out


def _caller(token: str, spec: Any, default_project: str, source: str) -> Caller:
    where = f"tokens file {source}" if source else "BATCHPREDICT_TOKENS"
    default = None
    if isinstance(spec, dict):
        default = spec.get("default_project")
        spec = spec.get("projects")
    if isinstance(spec, str):
        spec = [spec]
    if not isinstance(spec, list) or not spec or not all(isinstance(p, str) and p for p in spec):
        raise InvalidArgument(
            f"In the {where}, token {token[:4]}... must list its projects: a project name, a list "
            'of them, or "*" for every project.'
        )
    if "*" in spec:
        return Caller(None, str(default or default_project))
    if default is not None and default not in spec:
        raise InvalidArgument(
            f"In the {where}, token {token[:4]}... has default_project {default!r}, which is not "
            "among its projects."
        )
    return Caller(frozenset(spec), str(default or spec[0]))
