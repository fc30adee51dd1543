"""The job console: Ray's known-harmless C++ note is dropped, every other byte of stderr passes, in order,
even from a process that dies."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from raylib.console import drop_ray_noise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The two forms seen on our console: the driver's core worker, and a Ray Train actor's line forwarded by Ray.
DRIVER_NOTE = (b"[2026-11-28 02:19:22,326 E 6587 6587] core_worker.cc:2465: Actor with class name: "
               b"'MapWorker(MapBatches(load_images)->MapBatches(YoloxScorer))' and ID: 'd4c5abe80847b2b94958b0e901000000' "
               b"has constructor arguments in the object store and max_restarts > 0. If the arguments in the object "
               b"store go out of scope or are lost, the actor restart will fail. See "
               b"https://github.com/ray-project/ray/issues/53727 for more details.\n")
FORWARDED_NOTE = (b"\x1b[36m(TrainController pid=20419)\x1b[0m [2026-11-28 01:38:29,781 E 20419 20449] core_worker.cc:2465: "
                  b"Actor with class name: 'PreemptionWatcher' and ID: '89b183ff06fdf243561dc02b01000000' has "
                  b"constructor arguments in the object store and max_restarts > 0. If the arguments ...\n")
REAL_ERROR = b"[2026-11-28 02:19:22,400 E 6587 6587] core_worker.cc:910: Failed to register worker to Raylet: IOError\n"


def test_only_the_whole_note_lines_are_dropped():
    chunk = b"[round 0] score ...\n" + DRIVER_NOTE + REAL_ERROR + FORWARDED_NOTE + b"[score] 0/180 images"
    kept, at_line_start = drop_ray_noise(chunk, True)
    assert kept == b"[round 0] score ...\n" + REAL_ERROR + b"[score] 0/180 images"
    assert not at_line_start  # the last line is not finished: what follows continues it


def test_progress_updates_and_lines_begun_in_an_earlier_chunk_pass_as_they_come():
    assert drop_ray_noise(b"\r 40%|####  |\r 50%|#####  |", True) == (b"\r 40%|####  |\r 50%|#####  |", False)
    # Its beginning was passed on with the chunk before: the end of the line must follow it.
    assert drop_ray_noise(DRIVER_NOTE, False) == (DRIVER_NOTE, True)


def _job_like(body: str) -> subprocess.CompletedProcess:
    """A process that filters its stderr as every job does, then runs `body`."""
    code = "import os, signal, sys\nfrom raylib import console\nconsole.filter_stderr()\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)


def test_a_failing_job_shows_everything_but_the_note_in_order():
    done = _job_like(f"""
        os.write(2, {DRIVER_NOTE!r})  # as the C++ core worker writes it: to fd 2, not through sys.stderr
        print("error: score.batch_size must be > 0", file=sys.stderr)
        os.write(2, {REAL_ERROR!r})
        raise RuntimeError("the stage failed")
        """)
    assert done.returncode == 1
    err = done.stderr
    assert b"constructor arguments" not in err
    assert err.index(b"error: score.batch_size") < err.index(REAL_ERROR) < err.index(b"RuntimeError: the stage failed")
    assert b"Traceback (most recent call last)" in err


def test_the_note_is_dropped_when_its_newline_comes_in_a_write_of_its_own():
    # As `print(..., file=sys.stderr)` writes it (text, then "\n"), with a gap: the filter reads between them.
    done = _job_like(f"""
        import time
        time.sleep(0.5)  # the filter is up and waiting to read
        for _ in range(3):
            os.write(2, {FORWARDED_NOTE[:-1]!r})
            time.sleep(0.005)
            os.write(2, b"\\n")
        print("[round 0] train ...", file=sys.stderr)
        """)
    assert done.returncode == 0 and done.stderr == b"[round 0] train ...\n", done.stderr


def test_the_last_words_of_a_killed_job_still_reach_the_console():
    done = _job_like("""
        os.write(2, b"[round 0] score ...\\n")
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert done.returncode == -9
    assert done.stderr == b"[round 0] score ...\n"
