"""The wocker demo: recipes/ssh.yaml, an SSH server in a Debian container on host port 23322.

The image (bookworm minbase with openssh-server) is built once into the test cache, like the
Debian image of test_images.py, and reused. Traffic only goes to loopback and to an address
the test puts on lo (the host's "own" address).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, Ctrsh
from .test_container import shipped
from .test_images import DEBIAN_CACHE
from .test_names import Lines
from .test_network import own_address, start  # noqa: F401 (a fixture)


@pytest.fixture(scope="session")
def ssh_data(dirs: dict[str, str]) -> str:
    """The data dir holding the ssh recipe's image, built on first use through the host's network (in
    scripts/sandbox) from the recipe's own rootfs section, with no network of its own."""
    data = f"{DEBIAN_CACHE}/data"
    text = shipped("ssh", "test-ssh-build")
    text = re.sub(r"(?ms)^network:.*?(?=^\S)", "", text)
    text = re.sub(r"(?ms)^mounts:.*?(?=^\S)", "", text)
    text = text.split("\nprocess:")[0] + "\nprocess:\n  args: [/usr/sbin/sshd, -V]\n"
    path = Path(dirs["CTRSH_STATE_DIR"]).parent / "ssh-build.yaml"
    path.write_text(text)
    env = {**os.environ, "CTRSH_DATA_DIR": data, "CTRSH_STATE_DIR": dirs["CTRSH_STATE_DIR"]}
    cmd = [sys.executable, "-m", "ctrsh", "apply", str(path)]
    fd = os.environ.get("CTRSH_HOST_NETNS_FD")
    if fd:
        cmd = ["nsenter", f"--net=/proc/self/fd/{fd}", "--", *cmd]
    fds = (int(fd),) if fd else ()
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900, pass_fds=fds)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "OpenSSH_9" in r.stderr, r.stderr[-1000:]  # sshd -V: the image has it
    return data


@pytest.fixture
def ssh_ctrsh(ssh_data: str, dirs: dict[str, str], tmp_path: Path) -> Iterator[Ctrsh]:
    c = Ctrsh({**dirs, "CTRSH_DATA_DIR": ssh_data}, tmp_path)
    yield c
    assert os.listdir(f"{ssh_data}/containers") == []  # no writable layer left in the shared cache


def ssh(key: Path, address: str, tries: int = 100) -> subprocess.CompletedProcess[str]:
    """`ssh -p 23322 root@ADDRESS hostname`, retried while sshd starts (this bounds the wait only)."""
    argv = ["ssh", "-F", "/dev/null", "-p", "23322", "-i", str(key), "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
            f"root@{address}", "hostname"]  # fmt: skip
    for _ in range(tries):
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if r.returncode != 255 or "Permission denied" in r.stderr:  # else not listening yet
            return r
        time.sleep(0.2)
    return r


def test_ssh_recipe_logs_in_on_loopback_and_the_hosts_own_address(
    ssh_ctrsh: Ctrsh,
    own_address: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    key = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    (tmp_path / "authorized_keys").write_text((tmp_path / "key.pub").read_text())
    recipe = ssh_ctrsh.recipe(shipped("ssh", "test-ssh"), "ssh.yaml")  # its bind source is next to it
    # As under `sudo` from a login session, the caller's loginuid is set: PAM's pam_loginuid in the
    # container could not change it (no CAP_AUDIT_CONTROL) and would refuse every login; see the recipe.
    set_loginuid = 'echo 1000 > /proc/self/loginuid; exec "$@"'
    proc = subprocess.Popen(
        ["sh", "-c", set_loginuid, "sh", *ssh_ctrsh.cmd("apply", recipe)], env=ssh_ctrsh.env, cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out = Lines(proc)
        seen = [out.next(timeout=120) for _ in range(2)]  # ssh-keygen's line, then the script's
        assert seen[0].startswith("ssh-keygen: generating new host keys:") and "ED25519" in seen[0], seen
        assert seen[1].startswith("sshd listening on port 22"), seen
        for address in ("127.0.0.1", own_address):
            r = ssh(key, address)
            assert (r.returncode, r.stdout) == (0, "test-ssh\n"), r.stderr
        # a key that is not in authorized_keys is refused
        other = tmp_path / "other"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
        r = ssh(other, "127.0.0.1", tries=1)
        assert r.returncode == 255 and "Permission denied" in r.stderr, r.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
    assert code == 143, proc.stderr.read() if proc.stderr else ""


def container_pid1(state: str, name: str) -> int:
    """The host pid of the container's PID 1: in its mount namespace, pid 1 in its own pid namespace."""
    ino = os.stat(f"{state}/{name}/ns/mnt").st_ino
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/mnt").st_ino != ino:
                    continue
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            nspid = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()
            if nspid[-1] == "1" and len(nspid) > 2:
                return int(entry)
    raise AssertionError("no PID 1 found")


def test_ssh_init_forwards_sigterm_to_sshd(ssh_ctrsh: Ctrsh, tmp_path: Path) -> None:
    """SIGTERM to the container's PID 1 (what a `stop` sends): the init shell passes it on to sshd, waits
    for it and ends with 0, so the container stops by itself and apply tears it down and exits 0."""
    (tmp_path / "authorized_keys").write_text("")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")], check=True)
    proc = start(ssh_ctrsh, ssh_ctrsh.recipe(shipped("ssh", "test-sshterm"), "ssh.yaml"))
    try:
        out = Lines(proc)
        assert [out.next(timeout=120).split(" ")[0] for _ in range(2)] == ["ssh-keygen:", "sshd"]
        assert "Permission denied" in ssh(tmp_path / "key", "127.0.0.1").stderr  # sshd is up (no key may log in)
        os.kill(container_pid1(ssh_ctrsh.env["CTRSH_STATE_DIR"], "test-sshterm"), signal.SIGTERM)
        assert out.next() == "stopped"
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
    assert proc.returncode == 0, err
    assert "Received signal 15; terminating." in err, err[-4000:]  # sshd's own log: it got the signal
