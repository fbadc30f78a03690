"""The data policy: which URIs each project may read and write. Every input URI, wildcard (its
base and each file it matches), output prefix, fileData URI, console upload, validation and
download of the server goes through `DataPolicy` (the server's faces call it through
`data_gate.DataGate`).

Configuration: a `[projects]` table in the projects file (BATCHPREDICT_PROJECTS_FILE, TOML or
JSON) or in the tokens file beside its `[tokens]` table:

    [projects.team-a]
    read = ["gs://team-a-data/", "/srv/corpus/"]     # inputs, wildcards, fileData, downloads
    write = ["gs://team-a-results/"]                # output prefixes (readable too)
    [projects."*"]                                  # granted to every project
    read = ["gs://public-datasets/"]

Prefixes are folders: `gs://b/team-a` allows `gs://b/team-a/x`, never `gs://b/team-a-old/x`.
BigQuery prefixes name a project, dataset or table, their parts separated by dots:
`bq://proj.team_a` (or `bq://proj.team_a.`) allows the tables of dataset team_a, as an input
(read) or an output (write), never those of `bq://proj.team_a_old`.
Every project also has two areas of its own (`area_name` makes the folder name):
    {uploads root}/{project}/   read: where the console stores its uploads
    {outputs root}/{project}/   read and write: the console's default output prefix

Two modes:
- restricted (access tokens configured): a project reaches its own areas and its configured
  prefixes, nothing else;
- open (no tokens: loopback only, one trusted local user): any local path, gs:// or s3:// URI the
  user names, as before this policy existed; every project's areas are that user's.
Refused in both, whatever is configured:
- the data dir (the job store) and the uploads and outputs roots, except the project's own areas
  (in open mode: except the uploads and outputs roots);
- /proc, /sys and /dev, and anything that is not a regular file (devices, FIFOs, sockets);
- memory:// unless BATCHPREDICT_ALLOW_MEMORY_URIS is on (it is for tests).
Local paths are judged on their real path (`file://`, `~`, `..` and symlinks resolved); object
URIs with `.` or `..` segments are refused. A refusal is a PermissionDenied (403) naming the URI
and the setting that would allow it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tomllib
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from batchpredict import storage
from batchpredict.bigquery import tables
from batchpredict.errors import InvalidArgument, NotFound, PermissionDenied

__all__ = [
    "SYSTEM_DIRS",
    "DataPolicies",
    "DataPolicy",
    "MediaScope",
    "ProjectGrant",
    "area_name",
    "canonical",
    "load_grants",
    "media_scope",
]

#: Never read or written, whatever the configuration (judged on real paths).
SYSTEM_DIRS = ("/proc", "/sys", "/dev")
_AREA_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,98}[A-Za-z0-9])?")
_HOW = (
    "in the projects file (BATCHPREDICT_PROJECTS_FILE, or a [projects] table in "
    "BATCHPREDICT_TOKENS_FILE)"
)


def area_name(project: str) -> str:
    """The folder of a project's own areas: the project id when it is a plain name, else a
    digest (no separators, no `..`, no two projects sharing one)."""
    if _AREA_NAME.fullmatch(project):
        return project
    return "h-" + hashlib.sha256(project.encode()).hexdigest()[:32]


def canonical(uri: str) -> tuple[str, str]:
    """(scheme, canonical form) of a URI or local path, without touching storage for object
    URIs. A local path becomes its real absolute path (symlinks and `..` resolved; it need not
    exist); object URIs keep their text, with the scheme's usual name (gcs:// -> gs://)."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidArgument("The URI is empty.")
    if any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise InvalidArgument(f"The URI {uri!r} contains control characters.")
    scheme = storage.scheme_of(uri)
    if scheme == "file":
        return scheme, os.path.realpath(_local_path(uri))
    if "://" not in uri:
        return scheme, uri
    rest = uri.split("://", 1)[1]
    if any(seg in (".", "..") for seg in rest.split("/")):
        raise InvalidArgument(
            f"The URI {uri} has '.' or '..' segments; storage treats them literally, so they "
            "are refused. Write the object's path without them."
        )
    if scheme == "memory":  # fsspec's memory://a and memory:///a are one object
        return scheme, "memory:///" + rest.lstrip("/")
    return scheme, f"{scheme}://{rest}"


def _local_path(uri: str) -> str:
    path = uri
    if uri.startswith("file://"):
        path = uri[len("file://"):]
        if not path.startswith("/"):
            raise InvalidArgument(
                f"The URI {uri} names a host or a relative path; write local files as "
                "file:///absolute/path or as a plain path."
            )
    return os.path.abspath(os.path.expanduser(path))


def _under(uri: str, root: str) -> bool:
    """Whether `uri` is the folder `root` or inside it (a BigQuery table: in that project,
    dataset or table)."""
    if tables.is_table(root):
        return tables.table_under(uri, root)
    if root == "/":
        return uri.startswith("/")
    root = root.rstrip("/")
    return uri == root or uri.startswith(root + "/")


def _under_any(uri: str, roots: tuple[str, ...] | list[str]) -> bool:
    return any(_under(uri, r) for r in roots)


@dataclass(frozen=True)
class ProjectGrant:
    """The prefixes a project's configuration grants, canonical."""

    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()


def _read_config(path: str, setting: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise InvalidArgument(f"Cannot read {path} ({setting}): {exc.strerror}.") from None
    try:
        data = json.loads(raw) if path.endswith(".json") else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "JSON" if path.endswith(".json") else "TOML"
        raise InvalidArgument(f"{path} ({setting}) is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{path} ({setting}) must hold a [projects] table.")
    return data


def _grant(project: str, spec: Any, where: str) -> ProjectGrant:
    if not isinstance(spec, dict) or set(spec) - {"read", "write"}:
        raise InvalidArgument(
            f"In {where}, [projects.{project}] may hold only `read` and `write`, each a list of "
            'URI prefixes: read = ["gs://bucket/in/"], write = ["gs://bucket/out/"].'
        )
    out: dict[str, tuple[str, ...]] = {}
    for key in ("read", "write"):
        values = spec.get(key, [])
        if isinstance(values, str):
            values = [values]
        if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
            raise InvalidArgument(f"In {where}, projects.{project}.{key} must be a list of URIs.")
        prefixes = []
        for value in values:
            if tables.is_table(value):  # bq://PROJECT[.DATASET[.TABLE]]
                prefixes.append(tables.canonical(value))
                continue
            if storage.scheme_of(value) == "file" and not os.path.isabs(_strip_file(value)):
                raise InvalidArgument(
                    f"In {where}, projects.{project}.{key} holds {value!r}, which is not an "
                    "absolute path. Give absolute folders or gs:// / s3:// prefixes."
                )
            storage.check_uri(value)
            prefixes.append(canonical(value)[1])
        out[key] = tuple(prefixes)
    return ProjectGrant(out["read"], out["write"])


def _strip_file(value: str) -> str:
    return value[len("file://"):] if value.startswith("file://") else value


def load_grants(projects_file: str, tokens_file: str) -> dict[str, ProjectGrant]:
    """project (or "*") -> its grant, from the projects file and the tokens file's [projects]."""
    grants: dict[str, ProjectGrant] = {}
    sources = [(tokens_file, "BATCHPREDICT_TOKENS_FILE"), (projects_file,
                                                           "BATCHPREDICT_PROJECTS_FILE")]
    for path, setting in sources:
        if not path:
            continue
        data = _read_config(path, setting)
        if setting.endswith("TOKENS_FILE") and not isinstance(data.get("tokens"), dict):
            continue  # a tokens file without a [tokens] table is all tokens (auth.py)
        table = data.get("projects", {} if setting.endswith("TOKENS_FILE") else None)
        if not isinstance(table, dict):
            raise InvalidArgument(
                f"{path} ({setting}) must hold a [projects] table: [projects.NAME] with "
                "read = [...] and write = [...] URI prefixes."
            )
        for project, spec in table.items():
            grants[str(project)] = _grant(str(project), spec, f"{path} ({setting})")
    return grants


@dataclass(frozen=True)
class DataPolicy:
    """What one project may read and write. Built by `DataPolicies.for_project`."""

    project: str
    #: Tokens are configured: only the project's areas and configured prefixes.
    restricted: bool
    uploads_area: str
    outputs_area: str
    #: Configured prefixes (the project's and "*"'s), canonical.
    read_prefixes: tuple[str, ...] = ()
    write_prefixes: tuple[str, ...] = ()
    #: The data dir and the uploads and outputs roots: only the own areas inside them.
    reserved: tuple[str, ...] = ()
    allow_memory: bool = False
    #: Open mode, one user: every project's areas are that user's (the whole uploads and
    #: outputs roots readable, the outputs root writable).
    shared_roots: tuple[str, str] | None = None
    _own_read: tuple[str, ...] = field(init=False, default=())
    _own_write: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        uploads, outputs = self.shared_roots or (self.uploads_area, self.outputs_area)
        object.__setattr__(self, "_own_read", (uploads, outputs))
        object.__setattr__(self, "_own_write", (outputs,))

    # -- the checks every face calls ---------------------------------------------------------
    def check_read(self, uri: str, what: str = "input") -> str:
        """The canonical URI of a file the project may read (a local one: its real path, a
        regular file that exists). PermissionDenied, NotFound or InvalidArgument otherwise."""
        if tables.is_table(uri):
            return self._check_table(uri, "input", write=False, what=f"{what} table")
        storage.check_uri(uri, "input")
        scheme, canon = canonical(uri)
        self._judge(uri, scheme, canon, write=False, what=what)
        if scheme == "file":
            _require_regular_file(uri, canon, what)
        return canon

    def check_read_folder(self, uri: str, what: str = "wildcard") -> str:
        """The canonical form of a folder the project may list (a wildcard's base)."""
        storage.check_uri(uri, "input")
        scheme, canon = canonical(uri)
        self._judge(uri, scheme, canon, write=False, what=what)
        return canon

    def check_write(self, prefix: str, what: str = "output prefix") -> str:
        """The canonical form of an output prefix the project may write under."""
        if tables.is_table(prefix):
            return self._check_table(prefix, "output", write=True, what="output table")
        storage.check_uri(prefix, "output")
        scheme, canon = canonical(prefix)
        self._judge(prefix, scheme, canon, write=True, what=what)
        return canon

    def check_file_data(self, uri: str) -> None:
        """A fileData URI of a row. Open mode leaves remote schemes to the media policy
        (media.py); restricted mode wants every URI under a readable prefix."""
        try:
            scheme, canon = canonical(uri)
        except InvalidArgument as exc:
            raise PermissionDenied(f"fileData.fileUri {uri!r} is refused: {exc.message}") from None
        if scheme not in storage.SUPPORTED_SCHEMES and not self.restricted:
            return  # http(s) and friends: media.py refuses to fetch them
        self._judge(uri, scheme, canon, write=False, what="fileData.fileUri")
        if scheme == "file" and os.path.exists(canon):
            _require_regular_file(uri, canon, "fileData.fileUri")

    def _check_table(self, uri: str, role: str, write: bool, what: str) -> str:
        """A BigQuery table (or an output's dataset): only configured bq:// prefixes grant one
        in restricted mode; any in open mode. Its canonical bq://P.D[.T] (no pin)."""
        canon = tables.canonical(uri, role)
        self._judge(uri, "bq", canon, write=write, what=f"BigQuery {what}")
        return canon

    # -- the rules -------------------------------------------------------------------------
    def _judge(self, uri: str, scheme: str, canon: str, write: bool, what: str) -> None:
        verb = "write under" if write else "read"
        if scheme == "memory" and not self.allow_memory:
            raise PermissionDenied(
                f"The {what} {uri} is refused: memory:// URIs are for tests. Set "
                "BATCHPREDICT_ALLOW_MEMORY_URIS=true to allow them."
            )
        if scheme == "file" and _under_any(canon, SYSTEM_DIRS):
            raise PermissionDenied(
                f"The {what} {uri} is refused: {canon} is under {', '.join(SYSTEM_DIRS)}, "
                "which batchpredict never reads or writes (no setting allows it)."
            )
        own = self._own_write if write else self._own_read
        if _under_any(canon, self.reserved) and not _under_any(canon, own):
            raise PermissionDenied(
                f"The {what} {uri} is refused: it is inside the server's own data (the data "
                "dir, BATCHPREDICT_DATA_DIR, or the uploads and outputs roots, "
                "BATCHPREDICT_UPLOADS_ROOT and BATCHPREDICT_OUTPUTS_ROOT), which holds the job "
                f"store and other projects' files; no setting allows it. Project "
                f"{self.project} may {verb} {self._areas(write)}."
            )
        if not self.restricted:
            return
        allowed = own + self.write_prefixes if write else (
            own + self.read_prefixes + self.write_prefixes)
        if scheme not in (*storage.SUPPORTED_SCHEMES, "bq") or not _under_any(canon, allowed):
            key = "write" if write else "read"
            example = "bq://PROJECT.DATASET" if scheme == "bq" else "PREFIX/"
            raise PermissionDenied(
                f"Project {self.project} may not {verb} {uri}: it is outside the project's "
                f"data. It may {verb} {self._areas(write)}. An administrator can allow more with "
                f'{key} = ["{example}"] under [projects.{self.project}] {_HOW}.'
            )

    def _areas(self, write: bool) -> str:
        own = [self.outputs_area] if write else [self.uploads_area, self.outputs_area]
        extra = self.write_prefixes if write else self.read_prefixes + self.write_prefixes
        return ", ".join(p if tables.is_table(p) else p.rstrip("/") + "/" for p in [*own, *extra])


def _require_regular_file(uri: str, canon: str, what: str) -> None:
    try:
        st = os.stat(canon)
    except FileNotFoundError:
        raise NotFound(
            f"The {what} {uri} does not exist. Check the path and that it was uploaded."
        ) from None
    except OSError as exc:
        raise PermissionDenied(f"The {what} {uri} cannot be read: {exc.strerror}.") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(
            f"The {what} {uri} is a folder, not a file. Give a JSONL file, or a wildcard such "
            f"as {storage.join(uri, '*.jsonl')}."
        )
    if not stat.S_ISREG(st.st_mode):
        raise PermissionDenied(
            f"The {what} {uri} is refused: it is not a regular file (a device, FIFO or socket), "
            "and batchpredict reads regular files only."
        )


def _local_root(uri: str) -> str:
    return canonical(uri)[1]


class DataPolicies:
    """The data policy of every project on one server."""

    def __init__(self, settings: Any, restricted: bool) -> None:
        self.restricted = restricted
        self.allow_memory = bool(settings.allow_memory_uris)
        self.grants = load_grants(settings.projects_file, settings.tokens_file)
        self.uploads_root = _local_root(settings.uploads_uri)
        self.outputs_root = _local_root(settings.outputs_uri)
        data_dir = os.path.realpath(os.path.expanduser(settings.data_dir))
        self.reserved = (data_dir, self.uploads_root, self.outputs_root)
        self._cache: dict[str, DataPolicy] = {}

    def for_project(self, project: str) -> DataPolicy:
        policy = self._cache.get(project)
        if policy is None:
            mine = self.grants.get(project, ProjectGrant())
            every = self.grants.get("*", ProjectGrant())
            area = area_name(project)
            policy = DataPolicy(
                project=project,
                restricted=self.restricted,
                uploads_area=_join(self.uploads_root, area),
                outputs_area=_join(self.outputs_root, area),
                read_prefixes=mine.read + every.read,
                write_prefixes=mine.write + every.write,
                reserved=self.reserved,
                allow_memory=self.allow_memory,
                shared_roots=None if self.restricted else (self.uploads_root, self.outputs_root),
            )
            if len(self._cache) < 10_000:
                self._cache[project] = policy
        return policy


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


@dataclass(frozen=True)
class MediaScope:
    """Whose row a backend is answering: media.py checks fileData against `policy` too, and
    fetches under the server's `media` policy (a `media.MediaPolicy`)."""

    policy: DataPolicy
    media: Any


#: Set by `data_gate.ProjectScopedBackend` while a server's job generates.
MEDIA_SCOPE: ContextVar[MediaScope | None] = ContextVar("batchpredict_media_scope", default=None)


def media_scope() -> MediaScope | None:
    return MEDIA_SCOPE.get()
