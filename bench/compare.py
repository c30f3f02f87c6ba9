"""Side by side, in one run: `ctrsh apply` vs its exported script vs `runc run`, same rootfs and command.

    sudo .venv/bin/python bench/compare.py [--runs 20] [--recipe recipes/hello.yaml] [--baseline DIR]

Runs are interleaved (apply, script, runc, apply, …) so machine noise hits all
three alike. Prints the median and spread of each, and ratios to the script,
and the median CPU time (user+sys, the run and all it waited for): on a busy
machine CPU time moves less than wall time. --baseline DIR adds `ctrsh apply`
from another checkout of ctrsh (e.g. `git worktree add /tmp/base main`), run
with this venv, to compare a change against what it changes.
Compiles ctrsh's bytecode first, as `pip install` does (--no-compile: not).
Uses private state and data dirs; the host is left as found (runc deletes its
container on exit).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall, cpu) seconds of one run; cpu counts the run and every process it waited for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def runc_bundle(base: Path, image: str, recipe: dict[str, object]) -> Path:
    """A runc bundle over the same busybox image (read-only), command, hostname and namespaces."""
    bundle = base / "bundle"
    bundle.mkdir()
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    process = recipe["process"]
    assert isinstance(process, dict)
    config["process"].update(terminal=False, args=process["args"])
    config["root"] = {"path": image, "readonly": True}
    config["hostname"] = recipe.get("hostname") or recipe["name"]
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--recipe", default="recipes/hello.yaml")
    parser.add_argument("--no-compile", action="store_true", help="do not compile ctrsh's bytecode first")
    parser.add_argument("--baseline", metavar="DIR", help="another ctrsh checkout, run as a fourth contender")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/compare.py: run as root (it runs real containers)")
    import yaml

    recipe = yaml.safe_load((ROOT / args.recipe).read_text())
    base = Path(tempfile.mkdtemp(prefix="ctrsh-bench-"))
    env = {**os.environ, "CTRSH_STATE_DIR": f"{base}/run", "CTRSH_DATA_DIR": f"{base}/data"}
    ctrsh = str(Path(sys.executable).with_name("ctrsh"))
    # Bytecode as `pip install` leaves it: with PYTHONDONTWRITEBYTECODE set (as in some shells and
    # CI runners) an editable checkout has none, and every run compiles ctrsh from source (~90 ms).
    for tree in [ROOT, *([Path(args.baseline)] if args.baseline else [])]:
        if not args.no_compile:
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(tree / "ctrsh")], check=True)
    try:
        # Warm up: builds the image and /dev template once, so every timed run uses the cache.
        subprocess.run([ctrsh, "apply", "-q", args.recipe], env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        script = base / "run.sh"
        subprocess.run([ctrsh, "export", args.recipe, "-o", str(script)], env=env, cwd=ROOT, check=True)
        contenders: dict[str, Callable[[], tuple[float, float]]] = {
            "ctrsh apply": lambda: timed([ctrsh, "apply", "-q", args.recipe], env, ROOT),
            "exported script": lambda: timed(["bash", str(script)], env, ROOT),
        }
        if args.baseline:
            # -P: the working dir (this checkout) is not put first on sys.path, PYTHONPATH is
            base_env = {**env, "PYTHONPATH": str(Path(args.baseline).resolve())}
            argv = [sys.executable, "-P", "-m", "ctrsh", "apply", "-q", args.recipe]
            contenders["baseline apply"] = lambda: timed(argv, base_env, ROOT)
        if shutil.which("runc"):
            bundle = runc_bundle(base, f"{base}/data/images/busybox", recipe)
            contenders["runc run"] = lambda: timed(["runc", "run", "--bundle", str(bundle), "ctrsh-bench"], env, ROOT)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        cpu: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.runs):
            for name, run in contenders.items():
                wall, used = run()
                times[name].append(wall)
                cpu[name].append(used)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)
    base_median = statistics.median(times["exported script"])
    cpu_median = statistics.median(cpu["exported script"])
    print(f"{args.recipe}, {args.runs} interleaved runs each, wall time per run; load average {os.getloadavg()}")
    print(f"{'':18}{'median':>10}{'min':>10}{'max':>10}{'vs script':>11}{'cpu':>10}{'vs script':>11}")
    for name, samples in times.items():
        median = statistics.median(samples)
        row = f"{median * 1000:8.1f}ms{min(samples) * 1000:8.1f}ms{max(samples) * 1000:8.1f}ms"
        used = statistics.median(cpu[name])
        print(f"{name:18}{row}{median / base_median:10.2f}x{used * 1000:8.1f}ms{used / cpu_median:10.2f}x")
    steps = subprocess.run([ctrsh, "plan", args.recipe], env=env, cwd=ROOT, capture_output=True, text=True).stdout
    count = re.search(r": (\d+) steps", steps)
    print(f"(plan has {count.group(1) if count else '?'} steps; cached image steps are skipped at run time)")


if __name__ == "__main__":
    main()
