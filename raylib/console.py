"""What reaches the user's screen: how long work has left, and from Ray's C++ side one known note less.

Progress is logged (`logging`, INFO), not printed: a job's Hydra log file (`outputs/hydra/<time>/<job>.log`)
holds every line the screen showed, with times and the logger's name, while the screen shows the line
as it is (`ScreenFormatter`, conf/config.yaml `hydra.job_logging`). A record logged with
`extra=JOB_LOG_ONLY` goes to the log file only (`ScreenFilter`): the training workers' epoch lines, which
the screen already had from Ray, are written there once training is done.

Ray's C++ core worker logs, at ERROR level and straight to the process's stderr, a note for every actor
whose constructor arguments sit in the object store while it may restart (ray-project/ray#53727). Ray
itself puts them there for the actors we get from it: Ray Data's map workers (our scoring actors) and
Ray Train's PreemptionWatcher. So every training and scoring stage printed an "E ... core_worker.cc"
line about nothing the user did or can change. No Ray setting hides it without hiding real C++ errors
(RAY_BACKEND_LOG_LEVEL applies to all of them, in the session logs too), so a job's stderr goes through
a small child process that drops exactly that line. Ray's session logs keep it.

A child process, not a thread: what the job writes last before it dies (a traceback) is still in the
pipe when it dies, and the child, in a session of its own (Ctrl-C and a killed process group don't
reach it), passes it on and exits when the pipe closes.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import select
import subprocess
import sys

RAY_NOISE = re.compile(rb"core_worker\.cc:\d+: Actor with class name: '[^'\n]*' and ID: '[0-9a-f]+' "
                       rb"has constructor arguments in the object store and max_restarts > 0")
PARTIAL_HOLD_S = 0.2  # how long the end of a line is waited for (_forward)
JOB_LOG_ONLY = {"screen": False}  # log(..., extra=JOB_LOG_ONLY): the Hydra log file, not the screen
LOG_FILE_ONLY_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3")  # their INFO: the log file only
_installed = False


class ScreenFormatter(logging.Formatter):
    """A progress line as it is; a warning or an error with its level in front."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname}: {text}"


class ScreenFilter(logging.Filter):
    """Keeps records logged with `extra=JOB_LOG_ONLY` off the screen, and the INFO lines of the AWS SDK
    (boto3's "Found credentials in environment variables.": the job log has them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        quiet = record.levelno < logging.WARNING and record.name.startswith(LOG_FILE_ONLY_LIBRARIES)
        return getattr(record, "screen", not quiet)


def eta_text(seconds: float) -> str:
    """`2m05s`, or `4h50m` from an hour on: how long work that shows progress has left."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def drop_ray_noise(chunk: bytes, at_line_start: bool) -> tuple[bytes, bool]:
    """`chunk` less its whole lines that match RAY_NOISE; a line begun in an earlier chunk is passed on
    (its start was). Returns what to write and whether the next chunk starts a line."""
    kept = []
    # Only "\n" ends a line: a progress bar's "\r" updates pass through as they come.
    for line in re.findall(rb"[^\n]*\n|[^\n]+", chunk):
        whole = at_line_start and line.endswith(b"\n")
        if not (whole and RAY_NOISE.search(line)):
            kept.append(line)
        at_line_start = line.endswith(b"\n")
    return b"".join(kept), at_line_start


def filter_stderr() -> None:
    """From now on, this process's stderr (fd 2: Python's, the C++ core worker's, the worker lines Ray
    forwards) goes through the child; at exit, stderr is the console again once the child has passed
    everything on. Once per process."""
    global _installed
    if _installed:
        return
    _installed = True
    sys.stderr.flush()
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    child = subprocess.Popen([sys.executable, "-m", "raylib.console"], stdin=subprocess.PIPE,
                             stdout=sys.__stderr__, env={**os.environ, "PYTHONPATH": python_path},
                             start_new_session=True)
    console = os.dup(2)
    os.dup2(child.stdin.fileno(), 2)

    def restore() -> None:
        # Runs before Ray's own exit handler (registered when ray was imported; atexit runs the last
        # registered first): what Ray prints while it shuts down goes straight to the console.
        sys.stderr.flush()
        os.dup2(console, 2)
        os.close(console)
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a process we started still holds the pipe: it passes on its own
            pass

    atexit.register(restore)


def _forward(source: int, sink: int) -> None:
    """Pass `source` to `sink` less the noise. A line's end is waited for up to PARTIAL_HOLD_S: Python's
    `print(..., file=sys.stderr)` writes the text and its newline in two calls, so Ray's forwarded note
    could arrive as a "partial line" and pass; a partial line still partial after that is a progress
    bar's update, and passes."""
    at_line_start, partial = True, b""
    while True:
        if partial and not select.select([source], [], [], PARTIAL_HOLD_S)[0]:
            _write(sink, partial)
            at_line_start, partial = False, b""
            continue
        chunk = os.read(source, 1 << 16)
        if not chunk:
            break
        data = partial + chunk
        end = data.rfind(b"\n") + 1
        kept, at_line_start = drop_ray_noise(data[:end], at_line_start)
        _write(sink, kept)
        partial = data[end:]
    _write(sink, partial)


def _write(sink: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(sink, view):]


if __name__ == "__main__":
    try:
        _forward(sys.stdin.fileno(), sys.stdout.fileno())
    except BrokenPipeError:  # the console went away: nothing left to show
        pass
