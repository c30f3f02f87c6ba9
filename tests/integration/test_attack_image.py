"""Attacks by a hostile image author on the secure start. Each test FAILS while the hole exists.

The image is built by ctrsh in a private data dir, then edited the way a hostile image would ship it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, Ctrsh


def recipe(name: str, script: str, extra: str = "") -> str:
    return f"name: {name}\nrootfs: {{busybox: {{}}}}\n{extra}process:\n  args: [/bin/sh, -c, {json.dumps(script)}]\n"


def gcc(tmp_path: Path, source: str, out: Path, *flags: str) -> None:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the probe")
    src = tmp_path / (out.name + ".c")
    src.write_text(source)
    subprocess.run(["gcc", *flags, "-o", str(out), str(src)], check=True)


class Image:
    """A busybox image of the test's own, in a private data dir, to be made hostile."""

    def __init__(self, ctrsh: Ctrsh, data: Path) -> None:
        self.ctrsh = ctrsh
        self.data = data
        self.env = {**ctrsh.env, "CTRSH_DATA_DIR": str(data)}
        subprocess.run(ctrsh.cmd("apply", "-q", ctrsh.recipe(recipe("test-atk-build", "true"), "build.yaml")),
                       env=self.env, cwd=ROOT, check=True)  # fmt: skip
        self.root = data / "images/busybox"

    def apply(self, text: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.ctrsh.cmd("apply", "-q", self.ctrsh.recipe(text)), env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120, **kw)  # type: ignore[call-overload, no-any-return]  # fmt: skip


@pytest.fixture
def image(ctrsh: Ctrsh, tmp_path: Path) -> Iterator[Image]:
    data = tmp_path / "data"
    try:
        yield Image(ctrsh, data)
    finally:
        shutil.rmtree(data, ignore_errors=True)


EVIL_NSS = r"""
#include <stdio.h>
#include <string.h>
/* Runs inside whatever process loads it: record that process's uid and capabilities. */
__attribute__((constructor)) static void f(void) {
  FILE *s = fopen("/proc/self/status", "r"), *o = fopen("/tmp/NSS_RAN", "a"); char line[256];
  if (!o) return;
  while (s && fgets(line, sizeof line, s)) if (!strncmp(line, "CapEff", 6) || !strncmp(line, "Uid", 3)) fputs(line, o);
  fclose(o);
}
"""


def test_image_nss_module_never_runs_with_capabilities(image: Image, tmp_path: Path) -> None:
    """With security.user set, setpriv resolves the ids with getpwnam()/getgrnam() after pivot_root,
    while it still has every capability: glibc reads the image's /etc/nsswitch.conf and dlopen()s
    the image's libnss_NAME.so.2 from /lib/x86_64-linux-gnu (loader default path) into it."""
    libdir = image.root / "lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True, exist_ok=True)
    gcc(tmp_path, EVIL_NSS, libdir / "libnss_evil.so.2", "-shared", "-fPIC")
    (image.root / "etc/nsswitch.conf").write_text("passwd: evil files\ngroup: evil files\n")
    r = image.apply(recipe("test-atk-nss", "cat /tmp/NSS_RAN 2>/dev/null; true", "security: {user: '1000'}\n"))
    assert r.returncode == 0, r.stderr
    caps = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("CapEff:")]
    assert all(int(c, 16) == 0 for c in caps), f"image code ran with capabilities {caps}:\n{r.stdout}"


def test_image_passwd_cannot_turn_a_numeric_user_into_root(image: Image) -> None:
    """setpriv --reuid=1000 tries getpwnam("1000") first: an image whose /etc/passwd has a user
    *named* 1000 with uid 0 makes `user: '1000'` run the container as root."""
    with (image.root / "etc/passwd").open("a") as f:
        f.write("1000:x:0:0:named 1000, uid 0:/:/bin/sh\n")
    with (image.root / "etc/group").open("a") as f:
        f.write("1000:x:0:\n")
    r = image.apply(recipe("test-atk-pwname", "id -u; id -g", "security: {user: '1000'}\n"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1000", "1000"]


PROBE = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) { setuid(0); printf("ruid=%d euid=%d\n", (int)getuid(), (int)geteuid()); return 0; }
"""


def test_setuid_file_in_the_writable_layer_is_not_runnable_by_host_users(ctrsh: Ctrsh, tmp_path: Path) -> None:
    """CVE-2021-41091's class: the container (root, with CHOWN/FSETID) makes a setuid-root file in
    its upper layer; DATA/containers/NAME/upper is world-searchable (mkdir without a mode), so any
    unprivileged host user can run it and be root on the host. The data dir here is made 0755 and
    reachable from /, as the default /var/lib/ctrsh is."""
    data = Path(tempfile.mkdtemp(prefix="ctrsh-atk-", dir="/tmp"))
    data.chmod(0o755)
    try:
        image = Image(ctrsh, data)
        gcc(tmp_path, PROBE, image.root / "bin/probe", "-static", "-O1")
        text = recipe("test-atk-suid", "cp /bin/probe /tmp/p && chmod 4755 /tmp/p && echo ready && sleep 30")
        proc = subprocess.Popen(ctrsh.cmd("apply", "-q", ctrsh.recipe(text)), env=image.env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == "ready\n"
            planted = data / "containers/test-atk-suid/upper/tmp/p"
            for _ in range(100):  # the layer is there while the container runs
                if planted.exists():
                    break
                time.sleep(0.1)
            # through sh: setpriv's own exec of the path is not checked as the user it switched to
            r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", '"$0"',
                                str(planted)], capture_output=True, text=True)  # fmt: skip
        finally:
            proc.terminate()
            proc.communicate(timeout=60)
        assert "euid=0" not in r.stdout, f"a host user (nobody) ran the container's setuid file: {r.stdout}"
    finally:
        shutil.rmtree(data, ignore_errors=True)


KEYRING_PROBE = r"""
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
/* The id of the caller's user keyring (KEYCTL_GET_KEYRING_ID of KEY_SPEC_USER_KEYRING, no create). */
int main(void) { printf("%ld\n", syscall(SYS_keyctl, 0, -4, 0)); return 0; }
"""


@pytest.mark.xfail(
    strict=True,
    reason="known gap: keyrings are per uid; only a user namespace or seccomp (no stock tool) would separate them",
)
def test_container_root_does_not_share_the_hosts_root_keyring(image: Image, tmp_path: Path) -> None:
    """Keyrings are per user namespace, and without seccomp (which Docker uses to refuse keyctl,
    add_key, request_key) uid 0 in the container *is* host root for the kernel's key service: its
    user keyring is host root's (seen: the container planted a key there, visible in the host's
    /proc/keys), so it can add, link or clear root's keys and use up root's key quota."""
    gcc(tmp_path, KEYRING_PROBE, image.root / "bin/keyring", "-static", "-O1")
    host = subprocess.run([str(image.root / "bin/keyring")], capture_output=True, text=True, check=True).stdout
    if int(host) < 0:
        pytest.skip("host root has no user keyring to compare with")
    r = image.apply(recipe("test-atk-keyring", "keyring"))
    assert r.returncode == 0, r.stderr
    assert r.stdout != host, f"the container's user keyring is host root's ({host.strip()})"
