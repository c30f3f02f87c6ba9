"""engine.run_step: a step's output is kept (in memfds of ctrsh's own) and shown only when it fails."""

from __future__ import annotations

import os

import pytest

from ctrsh import engine
from ctrsh.errors import StepFailed


def failure(*argv: str) -> str:
    with pytest.raises(StepFailed) as e:
        engine.run_step(argv)
    return str(e.value)


def test_failure_shows_the_tail_of_stderr_else_stdout() -> None:
    msg = failure("sh", "-c", "echo out; echo err1 >&2; echo err2 >&2; exit 3")
    assert msg.splitlines()[1:] == ["  exit code 3", "    err1", "    err2"]
    msg = failure("sh", "-c", "for i in $(seq 20); do echo line$i; done; exit 1")
    assert msg.splitlines()[2:] == [f"    line{i}" for i in range(13, 21)]  # the last TAIL_LINES
    big = failure("sh", "-c", "head -c 300000 /dev/zero | tr '\\0' x; echo; echo last >&2; exit 1")
    assert big.splitlines()[-1] == "    last"


def test_a_step_reads_nothing_of_ours_and_leaves_no_descriptor() -> None:
    before = sorted(os.listdir("/proc/self/fd"))
    r, w = os.pipe()
    os.write(w, b"typed by the user\n")
    saved = os.dup(0)
    os.dup2(r, 0)
    try:
        # stdin is /dev/null: the step cannot read what is waiting on ctrsh's stdin
        msg = failure("sh", "-c", 'read -r line && echo "got $line" >&2; exit 4')
    finally:
        os.dup2(saved, 0)
        for fd in (r, w, saved):
            os.close(fd)
    assert msg.splitlines()[1:] == ["  exit code 4"]
    engine.run_step(("true",))
    assert sorted(os.listdir("/proc/self/fd")) == before  # the memfds and /dev/null are closed again
