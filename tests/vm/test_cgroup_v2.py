"""cgroup v2 for real: these machines are cgroup v1 (hybrid), most users' hosts are pure v2.

A Debian 12 guest boots its own distribution kernel with `cgroup_no_v1=all` and a tiny init (no
systemd) that mounts the one cgroup2 hierarchy at /sys/fs/cgroup, then runs the limit tests of
tests/integration/test_cgroups.py there, with ctrsh fresh from this work tree (a read-only 9p share).
The guest image is built once by tests/vm/build-image into /var/cache/ctrsh-test/vm/KEY (KEY: the
builder's hash) and reused; the guest writes to a throwaway overlay, never to the image.

The accelerator: KVM where /dev/kvm is a hardware one. Where it is PVM's (kvm_pvm: the machines this
project's CI runs on), a stock kernel does not boot under it (it hangs after the real-mode setup), so
the guest runs under qemu's TCG emulation instead: slower, but the same kernel and cgroups. Without
/dev/kvm the test is skipped. CTRSH_VM_ACCEL=kvm|tcg overrides the choice.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILDER = Path(__file__).with_name("build-image")
CACHE = Path("/var/cache/ctrsh-test/vm")

# The tests of item 2 (limits that bite), and the v2 join/teardown ones: each must PASS in the guest.
GUEST_TESTS = (
    "test_fork_bomb_stops_at_pids_max",
    "test_memory_hog_is_oom_killed",
    "test_cpu_burner_gets_half_a_core",
    "test_escaped_process_is_killed_by_teardown[apply]",
    "test_the_container_sees_its_own_cgroup_as_root",
)

BOOT_TIMEOUT = 900  # the whole guest run, boot to power-off (TCG is ~10x slower than KVM)

if os.geteuid() != 0:
    pytest.skip("the cgroup v2 VM test builds an image and runs containers: it needs root", allow_module_level=True)
if not os.path.exists("/dev/kvm"):
    pytest.skip("no /dev/kvm on this host: the cgroup v2 VM test needs KVM", allow_module_level=True)


def accelerator() -> str:
    chosen = os.environ.get("CTRSH_VM_ACCEL")
    if chosen:
        return chosen
    return "tcg" if os.path.exists("/sys/module/kvm_pvm") else "kvm"


def image_dir() -> Path:
    """The cached image for this builder; built (once, under a lock: other test runs share the cache)."""
    assert shutil.which("qemu-system-x86_64"), "qemu-system-x86_64 is missing: run scripts/setup"
    key = hashlib.sha256(BUILDER.read_bytes()).hexdigest()[:16]
    out = CACHE / key
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "root.ext4").exists():
            cmd = ["bash", str(BUILDER), str(out)]
            fd = os.environ.get("CTRSH_HOST_NETNS_FD")
            if fd:  # in scripts/sandbox: debootstrap downloads through the host's network namespace
                cmd = ["nsenter", f"--net=/proc/self/fd/{fd}", "--", *cmd]
            start = time.monotonic()
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, pass_fds=(int(fd),) if fd else ())
            assert r.returncode == 0, r.stderr[-3000:]
            print(f"built the VM image {out} in {time.monotonic() - start:.1f} s")
    return out


def _qemu_preexec() -> None:
    """qemu gets SIGKILL if pytest dies: no guest outlives the test run. And it may use every CPU:
    scripts/sandbox pins the tests to CPU 0 (for `unshare --mount=FILE`), which qemu does not need."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


def boot(image: Path, job: Path, accel: str) -> tuple[int, str]:
    """Boot the guest with `job` shared read-write (its script in, its output out) and this work
    tree read-only; return qemu's exit code and the serial console. qemu is always killed."""
    cmdline = (
        "root=/dev/vda rw console=ttyS0 init=/sbin/ctrsh-vm-init panic=-1 quiet "
        "cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1"
    )
    cpu = "max" if accel == "tcg" else "host,-arch-capabilities"
    console = job.parent / "console.log"
    argv = [
        "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-machine", f"q35,accel={accel}", "-cpu", cpu, "-smp", "2", "-m", "1024",
        "-serial", f"file:{console}", "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
        "-append", cmdline,
        "-drive", f"file={image / 'root.ext4'},format=raw,if=virtio,snapshot=on",
        "-virtfs", f"local,path={job},mount_tag=job,security_model=none,id=job",
        "-virtfs", f"local,path={ROOT},mount_tag=src,security_model=none,readonly=on,id=src",
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_qemu_preexec)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=BOOT_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=30)
    text = console.read_text(errors="replace") if console.exists() else ""
    return proc.returncode, out + text


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One guest run for the module: the limit tests in a pure cgroup v2 guest. Returns the
    console, the guest pytest's output and exit code, and the cgroup facts ctrsh detected there."""
    image = image_dir()
    job = tmp_path_factory.mktemp("vm") / "job"
    job.mkdir()
    (job / "src").write_text(f"{ROOT}\n")
    site = ".venv/lib/python3.11/site-packages"
    assert (ROOT / site).is_dir(), (
        f"{ROOT / site} is missing: the guest runs the work tree's .venv with bookworm's Python 3.11"
    )
    selected = " ".join(f"'tests/integration/test_cgroups.py::{t}'" for t in GUEST_TESTS)
    (job / "run").write_text(
        f"cd '{ROOT}'\n"
        # the bytecode the host compiled next to the sources is valid here (same Python 3.11): no
        # recompiling under TCG; what is missing is compiled in memory (the share is read-only)
        f"export PYTHONPATH='{ROOT}:{ROOT / site}' PYTHONDONTWRITEBYTECODE=1\n"
        'python3 -c \'from ctrsh.facts import detect; print("facts:", detect("/tmp/s", "/tmp/d").cgroups)\' > /job/facts\n'
        f"exec python3 -m pytest -p no:cacheprovider -rA --durations=0 {selected}\n"
    )
    accel = accelerator()
    start = time.monotonic()
    code, console = boot(image, job, accel)
    took = time.monotonic() - start
    out = (job / "out").read_text(errors="replace") if (job / "out").exists() else ""
    print(f"guest run ({accel}): {took:.1f} s, qemu exit {code}\n{out}")
    assert code == 0, console[-3000:]
    assert (job / "rc").exists(), f"the guest did not finish: {console[-3000:]}"
    return {"console": console, "out": out, "rc": (job / "rc").read_text().strip(),
            "facts": (job / "facts").read_text()}  # fmt: skip


def test_guest_has_only_cgroup2(guest: dict[str, str]) -> None:
    """The guest is a pure v2 host: one cgroup2 mount, no v1 hierarchy, and ctrsh sees version 2."""
    line = next(ln for ln in guest["console"].splitlines() if "cgroup mounts:" in ln)
    mounts = [m.strip() for m in line.split("cgroup mounts:")[1].split(";") if m.strip()]
    assert mounts == ["cgroup2 /sys/fs/cgroup cgroup2 rw,relatime 0 0"], line
    assert "version=2" in guest["facts"] and "'pids'" in guest["facts"], guest["facts"]


def test_guest_ran_the_limit_tests(guest: dict[str, str]) -> None:
    assert guest["rc"] == "0", guest["out"][-4000:]


@pytest.mark.parametrize("name", GUEST_TESTS)
def test_on_cgroup_v2(guest: dict[str, str], name: str) -> None:
    """Each selected test PASSED in the guest (not skipped, not deselected); its numbers are shown."""
    passed = f"PASSED tests/integration/test_cgroups.py::{name}"
    assert passed in guest["out"].splitlines(), guest["out"][-4000:]
    section = re.search(rf"_+ {re.escape(name)} _+\n-+ Captured stdout call -+\n(.*?)\n(?:_|=)", guest["out"], re.S)
    if section:  # the memory test prints its stderr's tail: show its OOM line
        shown = re.findall(r'ctrsh: [^"\n]*OOM-killed[^"\n]*', section.group(1)) or [section.group(1).strip()[:200]]
        print(f"{name} on cgroup v2: {shown[0]}")
