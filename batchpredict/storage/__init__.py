"""Every input URI and output prefix goes through here: fsspec for local paths, file://, gs://,
s3:// and memory://.

    uris.py         schemes and string rules (no I/O): scheme_of, check_uri, join, is_local
    filesystems.py  cached filesystems with each store's standard credentials, and
                    translate_error: the one place a storage client's exception becomes ours
    files.py        expand_inputs, open_read, list_files, remove, check_output_writable
    atomic.py       write_atomic / open_atomic_writer / concat / append: readers never
                    see half an object

Every message names the URI and what to do.
"""

from batchpredict.storage.atomic import append, concat, open_atomic_writer, write_atomic
from batchpredict.storage.files import (
    check_output_writable,
    exists,
    expand_inputs,
    list_files,
    open_read,
    read_bytes,
    remove,
    remove_empty_dir,
    size,
)
from batchpredict.storage.filesystems import (
    clear_filesystem_cache,
    filesystem,
    s3_endpoint_url,
    translate_error,
)
from batchpredict.storage.uris import SUPPORTED_SCHEMES, check_uri, is_local, join, scheme_of

__all__ = [
    "SUPPORTED_SCHEMES",
    "append",
    "check_output_writable",
    "check_uri",
    "clear_filesystem_cache",
    "concat",
    "exists",
    "expand_inputs",
    "filesystem",
    "is_local",
    "join",
    "list_files",
    "open_atomic_writer",
    "open_read",
    "read_bytes",
    "remove",
    "remove_empty_dir",
    "s3_endpoint_url",
    "scheme_of",
    "size",
    "translate_error",
    "write_atomic",
]
