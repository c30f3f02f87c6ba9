"""`ctrsh doctor`: each gap named with the package or setting that fills it."""

from __future__ import annotations

import subprocess
import sys

from ctrsh import doctor
from ctrsh.facts import CgroupFacts


def test_cgroup_v2_host() -> None:
    v2 = CgroupFacts(version=2, mounts=(("memory", "/sys/fs/cgroup"), ("pids", "/sys/fs/cgroup")), swap=True)
    by_name = {c.what: c for c in doctor.cgroups(v2)}
    assert by_name["cgroups"].detail == "v2 (unified): memory pids"
    assert not by_name["cgroup cpu"].ok and "resources.cpus" in by_name["cgroup cpu"].detail
    assert "cgroup freezer" not in by_name  # v1 only: v2 has cgroup.kill
    assert not by_name["device cgroup"].ok and "CAP_MKNOD" in by_name["device cgroup"].detail


def test_no_cgroups() -> None:
    (only,) = doctor.cgroups(CgroupFacts(version=0, mounts=(), swap=False))
    assert not only.ok and only.required and only.fix == "mount -t cgroup2 none /sys/fs/cgroup"


def test_render_names_the_packages() -> None:
    results = [
        doctor.Check("root", True, "yes"),
        doctor.Check("tool debootstrap", False, "missing (Debian images)", "apt-get install debootstrap", False),
        doctor.Check("tool ip", False, "missing (network namespaces)", "apt-get install iproute2"),
    ]
    text = doctor.render(results)
    assert text.splitlines() == [
        "ok       root              yes",
        "missing  tool debootstrap  missing (Debian images)  -> apt-get install debootstrap",
        "MISSING  tool ip           missing (network namespaces)  -> apt-get install iproute2",
        "# to install what is missing: apt-get install debootstrap iproute2",
        "# not ready: 1 required missing",
    ]


def test_this_host() -> None:
    """Runs without root and changes nothing; lists every area it checks."""
    r = subprocess.run([sys.executable, "-m", "ctrsh", "doctor"], capture_output=True, text=True, timeout=60)
    assert r.returncode in (0, 1), r.stderr
    for what in ("root", "tool unshare", "tool busybox", "namespace pid", "overlayfs", "cgroups", "user namespaces"):
        assert any(line.split(None, 1)[1].startswith(what) for line in r.stdout.splitlines()[:-1] if " " in line), what
