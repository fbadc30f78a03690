"""Real faults for real jobs: a PostgreSQL cluster stopped and started, a GCS emulator killed and
restarted on its own data, an S3 endpoint cut off, a tmpfs filling up, a SQLite file made
immutable. Each job is 200 rows in chunks of 20, answered by the OpenAI-compatible test double
(`tests/doubles/openai_server.py`) in this process, which records every request: a test can
count how often each row reached the model.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import REPO, cli_env, free_port, text_request, write_jsonl
from tests.doubles.openai_server import ServerThread, TestDoubleServer
from tests.emulators import s3_server  # noqa: F401  (fixture)

ROWS = 200
CHUNK_ROWS = 20


# -- the model: a recording test double --------------------------------------------------------
class Model:
    """The test double behind `echo-*`: `sent()` counts requests per row text ("row 17")."""

    def __init__(self, server: TestDoubleServer, url: str, registry: Path) -> None:
        self.server = server
        self.url = url
        self.registry = registry

    def sent(self) -> Counter[str]:
        return Counter(body["messages"][-1]["content"] for _, _, body in list(
            self.server.received))


@pytest.fixture
def model(tmp_path: Path) -> Iterator[Model]:
    """~20 rows/s (one request at a time, 0.05 s each): a 200-row job runs for ~10 s."""
    server = TestDoubleServer(latency=0.05, record=True)
    with ServerThread(server) as url:
        registry = tmp_path / "models.toml"
        registry.write_text(
            "include_defaults = false\n\n[[models]]\n"
            'name = "echo-*"\nbackend = "openai"\n'
            f'base_url = "{url}/v1"\nconcurrency = 1\nretries = 2\ntimeout = 10\n')
        yield Model(server, url, registry)


def request_rows(n: int = ROWS) -> list[dict[str, Any]]:
    return [{"key": i, "request": text_request(f"row {i}")} for i in range(n)]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def check_every_row_once(lines: list[dict[str, Any]], n: int = ROWS) -> None:
    assert [line["key"] for line in lines] == list(range(n))
    assert all(line["status"] == "" for line in lines), [ln for ln in lines if ln["status"]][:2]
    for line in lines:
        text = line["response"]["candidates"][0]["content"]["parts"][0]["text"]
        assert text == f"echo: row {line['key']}"


def check_no_row_twice(model: Model, committed_before: set[int] | None = None) -> None:
    """Each row reached the model; rows in `committed_before` (None: every row) exactly once."""
    sent = model.sent()
    assert set(sent) == {f"row {i}" for i in range(ROWS)}
    rows = range(ROWS) if committed_before is None else sorted(committed_before)
    twice = {i: sent[f"row {i}"] for i in rows if sent[f"row {i}"] != 1}
    assert twice == {}, "rows sent to the model again after they were committed"


def check_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text[-4000:]
        assert "Task exception was never retrieved" not in text, text[-4000:]
        assert "out of retries on exception" not in text, text[-4000:]


# -- the CLI ----------------------------------------------------------------------------------
class Command:
    """`batchpredict run ...` in a subprocess; stderr is collected line by line as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "batchpredict", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=REPO)
        self.err_lines: list[str] = []
        self.out_lines: list[str] = []
        self._readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                         for stream, lines in ((self.proc.stderr, self.err_lines),
                                               (self.proc.stdout, self.out_lines))]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    @property
    def out_text(self) -> str:
        return "".join(self.out_lines)

    @property
    def stderr(self) -> str:
        return "".join(self.err_lines)

    def wait_for_stderr(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            assert self.proc.poll() is None or text in self.stderr, (
                f"exited {self.proc.returncode} before printing {text!r}: {self.stderr}")
            assert time.monotonic() < deadline, f"no {text!r} in: {self.stderr}"
            time.sleep(0.05)

    def finish(self, timeout: float = 90) -> int:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for reader in self._readers:
                reader.join(5)
        return self.proc.returncode


@pytest.fixture
def run_command(tmp_path: Path, model: Model) -> Callable[..., Command]:
    """Start `batchpredict run INPUT --output OUT --model echo-small` with 20-row chunks."""

    def start(inputs: str, output: str, *extra: str, env: dict[str, str] | None = None,
              deadline: float = 60) -> Command:
        environ = cli_env(tmp_path / "data", BATCHPREDICT_MODELS_FILE=str(model.registry),
                          BATCHPREDICT_OUTAGE_DEADLINE_SECONDS=str(deadline),
                          BATCHPREDICT_POLL_SECONDS="0.1", **(env or {}))
        return Command(["run", inputs, "--output", output, "--model", "echo-small",
                        "--chunk-rows", str(CHUNK_ROWS), "--chunk-seconds", "600", "-q",
                        *extra], environ)

    return start


def wait_until(condition: Callable[[], bool], timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- PostgreSQL: one cluster per test, stopped and started at will ----------------------------
class PgCluster:
    def __init__(self) -> None:
        if not shutil.which("initdb") or not shutil.which("pg_ctl"):
            pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
        # not under pytest's tmp dirs: those are private to root, and the server runs as postgres
        self.root = Path(tempfile.mkdtemp(prefix="batchpredict-faults-pg-"))
        self.data = self.root / "data"
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(self.root, "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        subprocess.run([*self.as_postgres, "initdb", "-D", str(self.data), "-U", "postgres",
                        "--auth=trust"], check=True, capture_output=True)
        self.start()

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self.as_postgres, "pg_ctl", "-D", str(self.data), "-l",
                        str(self.root / "log"), "-w", *args], check=True, capture_output=True)

    def start(self) -> None:
        self._ctl("-o", f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._ctl("-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    cluster = PgCluster()
    try:
        yield cluster
    finally:
        cluster.remove()


# -- a GCS emulator process that keeps its objects on disk ------------------------------------
class GcsProcess:
    """gcp-storage-emulator in a subprocess with its data on disk (STORAGE_BASE): killed with
    SIGKILL and started again on the same port, it still has every object."""

    def __init__(self, root: Path, bucket: str = "faults") -> None:
        self.root = root
        self.bucket = bucket
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "STORAGE_BASE": str(self.root)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
             "--port", str(self.port), "--default-bucket", self.bucket, "-q"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._listening, 30, "the GCS emulator to start")

    def _listening(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint,
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}

    def client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage as gcs_storage

        return gcs_storage.Client(project="test", credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                                  client_options={"api_endpoint": self.endpoint})

    def put(self, key: str, data: bytes) -> str:
        self.client().bucket(self.bucket).blob(key).upload_from_string(data)
        return f"gs://{self.bucket}/{key}"

    def get(self, key: str) -> bytes:
        return self.client().bucket(self.bucket).blob(key).download_as_bytes()  # type: ignore[no-any-return]

    def keys(self, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.client().list_blobs(self.bucket, prefix=prefix))


@pytest.fixture
def gcs_process(tmp_path: Path) -> Iterator[GcsProcess]:
    emulator = GcsProcess(tmp_path / "gcs")
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.kill()


# -- a TCP path to a storage server that can be cut and restored ------------------------------
class Link:
    """A loopback TCP proxy to `target`: `cut()` closes its port and every connection through
    it (clients see connection refused, as when a server is down); `restore()` opens it again
    on the same port. The server behind it keeps its data."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


@pytest.fixture
def s3_link(s3_server: Any) -> Iterator[Link]:  # noqa: F811
    link = Link(("127.0.0.1", s3_server.port))
    link.restore()
    try:
        yield link
    finally:
        link.cut()


# -- a small disk --------------------------------------------------------------------------------
class SmallDisk:
    """A tmpfs of `size`, mounted for the test; `grow(size)` remounts it bigger."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); run as root")

    def grow(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], SmallDisk]]:
    disks: list[SmallDisk] = []

    def mount(size: str) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", size))
        return disks[-1]

    yield mount
    for disk in disks:
        disk.unmount()


def write_input(path: Path, n: int = ROWS) -> str:
    return str(write_jsonl(path, request_rows(n)))
