"""Detached containers at scale: start N busybox containers one after another with `apply -d`,
`ctrsh ps`, then `destroy --all`; for N in 10, 20, 50.

    sudo .venv/bin/python bench/lifecycle.py [--counts 10,20,50]

Prints, per N: total and per-container time of the starts and of the destroy, the time of
`ctrsh ps` with N running, and the host memory each running container costs beyond its own
processes: its holder `sh` and PID 1's parent `unshare` (Pss and Rss from smaps_rollup; Pss
shares the pages of the binaries among all containers, Rss counts them in full each time).
Uses private state and data dirs; the host is left as found.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = "name: {name}\nrootfs: {{busybox: {{}}}}\nprocess: {{args: [sleep, '3600']}}\n"


def run(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def rollup(pid: int) -> tuple[int, int]:
    """(Pss, Rss) in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Pss", "Rss"):
            values[key] = int(rest.split()[0])
    return values["Pss"], values["Rss"]


def overhead(state: str, name: str) -> tuple[int, int]:
    """Host memory of what holds one container: the holder sh (its pid is in the lock file) and the
    start command's `unshare` (STATE/NAME/pid), PID 1's parent."""
    holder = int(Path(f"{state}.{name}.lock").read_text())
    start = int(Path(f"{state}/{name}/pid").read_text())
    a, b = rollup(holder), rollup(start)
    return a[0] + b[0], a[1] + b[1]


def bench(count: int, ctrsh: str, env: dict[str, str], base: Path) -> dict[str, float]:
    starts = []
    for i in range(count):
        path = base / f"c{i}.yaml"
        path.write_text(RECIPE.format(name=f"bench-{i}"))
        starts.append(run([ctrsh, "apply", "-q", "-d", str(path)], env))
    ps = run([ctrsh, "ps"], env)
    out = subprocess.run([ctrsh, "ps"], env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    running = out.count(" running ")
    mem = [overhead(env["CTRSH_STATE_DIR"], f"bench-{i}") for i in range(count)]
    destroy = run([ctrsh, "destroy", "--all", "--force"], env)
    return {
        "count": count,
        "running": running,
        "start_total": sum(starts),
        "start_each": statistics.median(starts),
        "start_first": starts[0],
        "start_last": starts[-1],
        "ps": ps,
        "destroy_total": destroy,
        "destroy_each": destroy / count,
        "pss_kb": statistics.mean(m[0] for m in mem),
        "rss_kb": statistics.mean(m[1] for m in mem),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="10,20,50")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/lifecycle.py: run as root (it runs real containers)")
    base = Path(tempfile.mkdtemp(prefix="ctrsh-bench-life-"))
    env = {**os.environ, "CTRSH_STATE_DIR": f"{base}/run", "CTRSH_DATA_DIR": f"{base}/data"}
    ctrsh = str(Path(sys.executable).with_name("ctrsh"))
    rows = []
    try:
        warm = base / "warm.yaml"  # builds the image and /dev template once
        warm.write_text(RECIPE.format(name="bench-warm").replace("sleep, '3600'", "'true'"))
        run([ctrsh, "apply", "-q", str(warm)], env)
        for count in (int(c) for c in args.counts.split(",")):
            rows.append(bench(count, ctrsh, env, base))
    finally:
        subprocess.run([ctrsh, "destroy", "--all", "--force"], env=env, cwd=ROOT, check=False, capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)
    print(
        "N   running  start: total   each(median) first    last   | ps      | destroy: total  each  "
        "| per container: Pss   Rss"
    )
    for r in rows:
        print(
            f"{r['count']:<4}{r['running']:>7}  {r['start_total']:10.2f}s {r['start_each'] * 1000:8.0f}ms"
            f" {r['start_first'] * 1000:6.0f}ms {r['start_last'] * 1000:6.0f}ms | {r['ps'] * 1000:5.0f}ms"
            f" | {r['destroy_total']:10.2f}s {r['destroy_each'] * 1000:5.0f}ms"
            f" | {r['pss_kb'] / 1024:12.2f}MB {r['rss_kb'] / 1024:.2f}MB"
        )


if __name__ == "__main__":
    main()
