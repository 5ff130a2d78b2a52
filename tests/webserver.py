"""A real nginx serving a folder on 127.0.0.1, for the fleet tests and benchmarks/bench_fleet.py (nginx from
Debian, installed by .ci/run). Keep-alive is off so a test's cutting proxy sees one request per connection."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Iterator

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_folder(folder: Path, access_log: Path | None = None) -> Iterator[str]:
    """Serve `folder` as plain files; yields the base URL. `access_log`: where nginx logs each request (path and
    bytes sent). RuntimeError when nginx is missing or fails to start."""
    if not os.path.exists(NGINX):
        raise RuntimeError("nginx is not installed (apt-get install nginx; .ci/run installs it)")
    work = Path(tempfile.mkdtemp(prefix="edgecls-nginx."))
    port = free_port()
    (work / "nginx.conf").write_text(textwrap.dedent(f"""\
        daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/error.log;
        {"user root;" if os.geteuid() == 0 else ""}
        events {{ worker_connections 64; }}
        http {{ log_format sent '$request_uri $body_bytes_sent'; access_log {access_log or work / "access.log"} sent;
               keepalive_timeout 0;
               server {{ listen 127.0.0.1:{port}; root {folder}; }} }}
        """))
    proc = subprocess.Popen([NGINX, "-c", str(work / "nginx.conf"), "-p", str(work)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"nginx did not start: {proc.stderr.read().decode()[-500:]}") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)

