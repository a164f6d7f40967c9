"""A throwaway stack for the benchmarks that run the service as real processes.

`Scratch` creates a fresh Postgres database and a work folder and, when given a port, a
private Redis keeping nothing on disk. The benchmark appends the processes it starts to
`procs`; on exit they are stopped (SIGTERM, then SIGKILL after 30 s), Redis is shut
down and the database dropped, whatever ended the run; the folder (the services' logs)
is removed after a clean run and kept, with a line saying where, after a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from types import TracebackType

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Scratch:
    def __init__(self, redis_port: int | None = None, prefix: str = "janus-bench-") -> None:
        import psycopg

        self.name = f"janus_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.db_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{self.name}"
        self.work = Path(tempfile.mkdtemp(prefix=prefix))
        self.redis_port = redis_port
        self.procs: list[subprocess.Popen] = []
        if redis_port is not None:
            subprocess.run(["redis-server", "--port", str(redis_port), "--daemonize", "yes",
                            "--save", "", "--appendonly", "no", "--dir", str(self.work)],
                           check=True, capture_output=True)

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        import psycopg

        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self.redis_port is not None:
            subprocess.run(["redis-cli", "-p", str(self.redis_port), "shutdown", "nosave"],
                           capture_output=True)
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        if kind is None:
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            print(f"# the services' logs are kept in {self.work}")
