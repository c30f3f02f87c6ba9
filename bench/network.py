"""Bridge networking's cost: apply of a bridge recipe vs a none recipe, and 20 containers on one bridge.

    sudo bash scripts/sandbox .venv/bin/python bench/network.py [--runs 15] [--count 20]

Run it in scripts/sandbox: the bridge, veths and iptables rules then live in a
private network namespace. Uses private state and data dirs.

1. `ctrsh apply` of the same container (`true`) with `network: {mode: none}`
   and with `network: {mode: bridge, publish: [8080:80]}`, interleaved, whole
   apply (setup, run, teardown): medians and the ratio.
2. COUNT containers on one bridge, started one after another and *kept running*
   (so each new one sees more leases, more veths on the bridge and more rules),
   timing each apply until its container prints `ready`; then all are stopped.
   Prints the time per container against the count, to show whether it grows.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def recipe(base: Path, name: str, network: str, script: str) -> str:
    path = base / f"{name}.yaml"
    path.write_text(
        f"name: {name}\nrootfs: {{busybox: {{}}}}\nnetwork: {network}\nprocess: {{args: [/bin/sh, -c, '{script}']}}\n"
    )
    return str(path)


def apply_cmd(path: str) -> list[str]:
    return [sys.executable, "-m", "ctrsh", "apply", "-q", path]


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:7.0f} ms (min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/network.py: run as root, inside scripts/sandbox")
    base = Path(tempfile.mkdtemp(prefix="ctrsh-netbench-"))
    env = {**os.environ, "CTRSH_STATE_DIR": str(base / "run"), "CTRSH_DATA_DIR": str(base / "data")}
    none = recipe(base, "bench-none", "{mode: none}", "true")
    bridge = recipe(base, "bench-bridge", '{mode: bridge, publish: ["8080:80"]}', "true")
    timed(apply_cmd(none), env)  # builds the image once, outside the measurements
    times: dict[str, list[float]] = {"none": [], "bridge": []}
    for _ in range(args.runs):
        times["none"].append(timed(apply_cmd(none), env))
        times["bridge"].append(timed(apply_cmd(bridge), env))
    print(f"apply, {args.runs} runs each, interleaved (whole apply: setup, `true`, teardown)")
    print(f"  mode none   {ms(times['none'])}")
    print(f"  mode bridge {ms(times['bridge'])}")
    print(f"  ratio       {statistics.median(times['bridge']) / statistics.median(times['none']):.2f}x")

    print(f"\n{args.count} containers on one bridge, one after another, each kept running:")
    procs, per = [], []
    try:
        for i in range(args.count):
            path = recipe(base, f"bench-many{i}", "{mode: bridge}", "echo ready; exec sleep 600")
            start = time.perf_counter()
            p = subprocess.Popen(apply_cmd(path), env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                 start_new_session=True)  # fmt: skip
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline() == "ready\n", f"container {i} did not start"
            per.append(time.perf_counter() - start)
            print(f"  container {i + 1:2d}: {per[-1] * 1000:5.0f} ms to ready")
        # The names step (names.py) rewrites every member's /etc/hosts: its cost grows with the count.
        from ctrsh.facts import Facts
        from ctrsh.names import hosts_argv

        rewrite = hosts_argv(Facts(state_dir=env["CTRSH_STATE_DIR"]), "ctrsh0", "")
        names = [timed(list(rewrite), env) for _ in range(10)]
        print(f"  the names step with {len(procs)} containers up (rewrites {len(procs)} hosts files): {ms(names)}")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=120)
    subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=True)  # all stopped: no mounts left
    half = len(per) // 2
    print(f"  first {half}: median {statistics.median(per[:half]) * 1000:.0f} ms; "
          f"last {len(per) - half}: median {statistics.median(per[half:]) * 1000:.0f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
