"""A real Label Studio server for the live tests (tests/test_labelstudio_live.py), from `.lsvenv/`.

`label-studio==1.23.2` runs in its own venv (`scripts/setup_labelstudio.sh`, created on first use): its
Django pins are not the project's. A fresh data dir takes ~60 s of migrations before /health answers, so
one migrated template is made per test session (`template`) and each test copies it (`cp -a`, ~7 s to
start). The template's organisation was created with legacy tokens enabled, so both kinds of token work:
the legacy one (`Authorization: Token`) and a personal access token (a JWT refresh token) made through
`POST /api/token/`. Offline: no version check, analytics or Sentry. A server is killed by its pid.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import requests

from tests.helpers import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABEL_STUDIO = os.path.join(ROOT, ".lsvenv", "bin", "label-studio")
USER, PASSWORD = "annotator@example.com", "not-a-real-password-1"
LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"
FIRST_START_S = 600  # migrations of a fresh data dir: 62-65 s here alone, minutes beside other tests
START_S = 90  # a copied, migrated data dir: ~7 s alone; CI runs other tests beside it


@dataclass
class Template:
    data_dir: str  # migrated, with the user and both tokens
    personal_token: str  # a personal access token (JWT refresh token)


@dataclass
class Server:
    url: str
    pid: int
    data_dir: str
    document_root: str


def setup_venv() -> None:
    """`.lsvenv/` with Label Studio (a no-op when installed: ./test.sh runs the same script first)."""
    subprocess.run([os.path.join(ROOT, "scripts", "setup_labelstudio.sh")], check=True)


def _env(data_dir: str, document_root: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LABEL_STUDIO_", "DJANGO_"))}
    return {**env, "LABEL_STUDIO_BASE_DATA_DIR": data_dir, "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
            "LABEL_STUDIO_COLLECT_ANALYTICS": "false", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true", "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": document_root, "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true"}


def _wait_for_health(url: str, process: subprocess.Popen, seconds: float, log_path: str) -> None:
    """Poll /health until it answers 200, the process exits, or `seconds` pass (then the log's tail)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if requests.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass  # not listening yet
        if process.poll() is not None or time.monotonic() > deadline:
            tail = open(log_path, errors="replace").read()[-3000:]
            raise RuntimeError(f"Label Studio at {url} did not answer /health within {seconds} s "
                               f"(exit code {process.poll()}):\n{tail}")
        time.sleep(0.5)


@contextlib.contextmanager
def running(data_dir: str, document_root: str, seconds: float = START_S, first: bool = False,
            env: dict[str, str] | None = None) -> Iterator[Server]:
    """Label Studio on a free port of 127.0.0.1 over `data_dir`, serving local files under `document_root`;
    killed (its process group, by pid) after. The port is checked to be the one that answers: a busy port
    silently moves Label Studio to the next one."""
    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    log_path = os.path.join(data_dir, "server.log")
    args = [LABEL_STUDIO, "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port),
            "--data-dir", data_dir]
    if first:
        args += ["--username", USER, "--password", PASSWORD, "--user-token", LEGACY_TOKEN]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(args, env={**_env(data_dir, document_root), **(env or {})}, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for_health(url, process, seconds, log_path)
        yield Server(url, process.pid, data_dir, document_root)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def make_template(folder: str) -> Template:
    """A migrated data dir with our user and a personal access token, made once (the server stopped)."""
    setup_venv()
    data_dir = os.path.join(folder, "data")
    os.makedirs(data_dir)
    with running(data_dir, folder, FIRST_START_S, first=True) as server:
        answer = requests.post(f"{server.url}/api/token/", headers={"Authorization": f"Token {LEGACY_TOKEN}"},
                               timeout=30)
        answer.raise_for_status()
        personal_token = answer.json()["token"]
    os.remove(os.path.join(data_dir, "server.log"))
    return Template(data_dir, personal_token)


@contextlib.contextmanager
def server_from(template: Template, folder: str, document_root: str, env: dict[str, str] | None = None
                ) -> Iterator[Server]:
    """A server over a copy of the template's data dir in `folder` (the template stays as it is), with
    `env` added to its environment."""
    data_dir = os.path.join(folder, "label-studio-data")
    shutil.copytree(template.data_dir, data_dir, symlinks=True)
    with running(data_dir, document_root, env=env) as server:
        yield server
