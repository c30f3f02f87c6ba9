"""Side by side, in one run: recipes/userns.yaml vs the same recipe without the user namespace.

    sudo .venv/bin/python bench/userns.py [--runs 10] [--debian-data /var/cache/ctrsh-test/data]

1. First apply (fresh data dir each time: the busybox image, the /dev template and, with `user`,
   the shifted copy are built) and cached apply (everything reused), runs interleaved.
2. The shifted copy alone: ctrsh's own copy step (phases/rootfs.py SHIFT_COPY) timed on the busybox
   image and, if there is one, the cached Debian image of the tests, into a temporary dir (the
   cache is only read), with its size on disk.
Uses private state and data dirs; the host is left as found.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ctrsh.phases.namespaces import WRITE_MAPS  # noqa: E402
from ctrsh.phases.rootfs import SHIFT_COPY  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def du(path: str) -> int:
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout.split()[0])


def shift_alone(image: str, base: Path) -> tuple[float, int]:
    """Time ctrsh's copy step on `image` through a user namespace of the default maps."""
    ns = base / "ns"
    ns.mkdir()
    subprocess.run(["mount", "--bind", "--make-private", str(ns), str(ns)], check=True)
    try:
        (ns / "user").touch()
        (ns / "mnt").touch()
        subprocess.run(["unshare", f"--user={ns}/user", f"--mount={ns}/mnt", "true"], check=True)
        maps = "0 100000 65536"
        subprocess.run(["sh", "-c", WRITE_MAPS, "bench", f"{ns}/user", maps, maps], check=True)
        work = base / "shift"
        (work / "rootfs").mkdir(parents=True)
        os.chown(work / "rootfs", 100000, 100000)
        start = time.perf_counter()
        subprocess.run(["sh", "-c", SHIFT_COPY, "bench", image, str(work / "rootfs"), f"{ns}/user"], check=True)
        took = time.perf_counter() - start
        size = du(str(work / "rootfs"))
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=True)
        return took, size
    finally:
        subprocess.run(["umount", "--recursive", str(ns)], check=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(ns)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--debian-data", default="/var/cache/ctrsh-test/data")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/userns.py: run as root (it runs real containers)")
    base = Path(tempfile.mkdtemp(prefix="ctrsh-bench-userns-"))
    userns = ROOT / "recipes/userns.yaml"
    plain = base / "plain.yaml"
    text = userns.read_text()
    plain.write_text(
        "\n".join(line for line in text.splitlines() if not line.startswith(("uid_map", "gid_map")))
        .replace("namespaces: [user, ", "namespaces: [")
        .replace("name: userns", "name: userns-plain")
    )
    ctrsh = str(Path(sys.executable).with_name("ctrsh"))
    times: dict[str, list[float]] = {k: [] for k in ("first, user ns", "first, no user ns", "cached, user ns",
                                                     "cached, no user ns")}  # fmt: skip
    try:
        for i in range(args.runs):
            for label, recipe in (("user ns", userns), ("no user ns", plain)):
                env = {**os.environ, "CTRSH_STATE_DIR": f"{base}/run", "CTRSH_DATA_DIR": f"{base}/first-{i}"}
                times[f"first, {label}"].append(timed([ctrsh, "apply", "-q", str(recipe)], env))
                subprocess.run(["rm", "-rf", "--one-file-system", f"{base}/first-{i}"], check=True)
        env = {**os.environ, "CTRSH_STATE_DIR": f"{base}/run", "CTRSH_DATA_DIR": f"{base}/data"}
        for recipe in (userns, plain):  # warm up the cache
            subprocess.run([ctrsh, "apply", "-q", str(recipe)], env=env, cwd=ROOT, check=True, capture_output=True)
        for _ in range(args.runs):
            times["cached, user ns"].append(timed([ctrsh, "apply", "-q", str(userns)], env))
            times["cached, no user ns"].append(timed([ctrsh, "apply", "-q", str(plain)], env))
        print(f"recipes/userns.yaml with and without `user`, {args.runs} interleaved runs each, wall time per run")
        print(f"{'':22}{'median':>10}{'min':>10}{'max':>10}")
        for name, samples in times.items():
            row = f"{statistics.median(samples) * 1000:8.1f}ms{min(samples) * 1000:8.1f}ms{max(samples) * 1000:8.1f}ms"
            print(f"{name:22}{row}")
        for what in ("first", "cached"):
            ratio = statistics.median(times[f"{what}, user ns"]) / statistics.median(times[f"{what}, no user ns"])
            print(f"{what}: user ns / no user ns = {ratio:.2f}x")
        print("\nthe shifted copy alone (ctrsh's copy step, through a user namespace):")
        sources = [("busybox", f"{base}/data/images/busybox")]
        debian = sorted(glob.glob(f"{args.debian_data}/images/bookworm-minbase-*[0-9a-f]"))
        sources += [(f"debian {Path(d).name}", d) for d in debian[:1]]
        for name, image in sources:
            took, size = shift_alone(image, base)
            print(f"  {name:40} image {du(image) / 2**20:7.1f} MiB  copy {size / 2**20:7.1f} MiB  {took:6.2f} s")
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)


if __name__ == "__main__":
    main()
