"""Attacks on the caller through what it hands the container. Each test FAILS while the hole exists."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shutil
import subprocess
import termios
from pathlib import Path

import pytest

from .conftest import ROOT, Ctrsh


def recipe(name: str, script: str, extra: str = "", process_extra: str = "") -> str:
    return (
        f"name: {name}\nrootfs: {{busybox: {{}}}}\n{extra}process:\n{process_extra}"
        f"  args: [/bin/sh, -c, {json.dumps(script)}]\n"
    )


def test_container_without_terminal_cannot_read_or_retune_the_callers_terminal(ctrsh: Ctrsh) -> None:
    """Without `terminal: true`, stdin becomes /dev/null if it is a tty, but stdout and stderr are
    still the caller's terminal, and a login's 0/1/2 are one O_RDWR open file: the container reads
    what the user types (here a password waiting in the input queue) through fd 1, and can change
    the terminal's settings (stty -echo stays after ctrsh exits)."""
    script = 'stty -F /proc/self/fd/1 -echo 2>/dev/null; read -t 5 line <&1 && echo "STOLE:$line" >&2; true'
    master, slave = pty.openpty()

    def make_ctty() -> None:  # a login: a new session whose terminal is the pty
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        os.write(master, b"hunter2\n")  # typed by the user, waiting for the next reader
        r = subprocess.run(ctrsh.cmd("apply", "-q", ctrsh.recipe(recipe("test-atk-tty", script))), env=ctrsh.env,
                           cwd=ROOT, stdin=slave, stdout=slave, stderr=subprocess.PIPE, text=True,
                           preexec_fn=make_ctty, timeout=60)  # fmt: skip
        echo = bool(termios.tcgetattr(slave)[3] & termios.ECHO)
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == 0, r.stderr
    assert "STOLE:hunter2" not in r.stderr, "the container read the caller's keystrokes"
    assert echo, "the container turned off echo on the caller's terminal"


@pytest.mark.parametrize("how", ["recipe cwd", "image symlink at cwd"])
def test_leaked_fd_cannot_become_the_containers_cwd(ctrsh: Ctrsh, tmp_path: Path, how: str) -> None:
    """runc CVE-2024-21626: a descriptor the caller leaked (here fd 99 on a host dir) is still open
    in PID 1 when it does `cd "$cwd"` (fds are closed only after setpriv), so cwd /proc/self/fd/99 -
    written in the recipe, or an image symlink at the recipe's cwd - leaves the container in a host
    directory, and `..` walks up to the host's /."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "SECRET").write_text("host-secret\n")
    data = tmp_path / "data"
    env = {**ctrsh.env, "CTRSH_DATA_DIR": str(data)}
    if how == "recipe cwd":
        cwd = "/proc/self/fd/99"
    else:
        subprocess.run(ctrsh.cmd("apply", "-q", ctrsh.recipe(recipe("test-atk-fdb", "true"), "b.yaml")), env=env,
                       cwd=ROOT, check=True)  # fmt: skip
        (data / "images/busybox/app").symlink_to("/proc/self/fd/99")
        cwd = "/app"
    text = recipe("test-atk-fdcwd", "cat SECRET 2>/dev/null; ls ../.. 2>/dev/null | head -3; true",
                  process_extra=f"  cwd: {cwd}\n")  # fmt: skip
    fd = os.open(host, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.dup2(fd, 99, inheritable=True)
        r = subprocess.run(ctrsh.cmd("apply", "-q", ctrsh.recipe(text)), env=env, cwd=ROOT, capture_output=True,
                           text=True, timeout=60, pass_fds=(99,))  # fmt: skip
    finally:
        os.close(fd)
        os.close(99)
        shutil.rmtree(data, ignore_errors=True)
    assert "host-secret" not in r.stdout, f"the container's cwd is a host directory:\n{r.stdout}"
