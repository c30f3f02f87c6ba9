"""Side by side, in one run: a second (cached) apply of the Debian recipe vs busybox hello.

    sudo .venv/bin/python bench/images.py [--runs 20] [--data-dir DIR]

With a cached image the Debian container should start about as fast as busybox
(target: at most 1.5x): nothing is downloaded or copied, the overlay just puts
an empty upper layer over the image. Runs are interleaved so machine noise hits
both alike. The first build is timed too when the image is not yet in the data
dir (pass --data-dir to reuse one, e.g. the tests' /var/cache/ctrsh-test/data).
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


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def du(path: str) -> int:
    out = subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--data-dir", help="an image cache to use (and keep); default: a fresh one, removed after")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/images.py: run as root (it runs real containers)")
    base = Path(tempfile.mkdtemp(prefix="ctrsh-bench-images-"))
    data = args.data_dir or f"{base}/data"
    env = {**os.environ, "CTRSH_STATE_DIR": f"{base}/run", "CTRSH_DATA_DIR": data}
    ctrsh = str(Path(sys.executable).with_name("ctrsh"))
    recipes = {"busybox hello": "recipes/hello.yaml", "debian (cached)": "recipes/debian.yaml"}
    try:
        images = Path(data) / "images"
        before = set(os.listdir(images)) if images.is_dir() else set()
        for name, recipe in recipes.items():  # first builds (skipped where cached)
            took = timed([ctrsh, "apply", "-q", recipe], env)
            made = sorted((set(os.listdir(images)) - before) - {n for n in os.listdir(images) if "." in n})
            before = set(os.listdir(images))
            for image in made:
                print(f"first build of {image} ({name}): {took:.1f}s, {du(str(images / image)) / 1e6:.0f} MB")
        times: dict[str, list[float]] = {name: [] for name in recipes}
        for _ in range(args.runs):
            for name, recipe in recipes.items():
                times[name].append(timed([ctrsh, "apply", "-q", recipe], env))
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False)
    base_median = statistics.median(times["busybox hello"])
    print(f"{args.runs} interleaved runs each, wall time per `ctrsh apply -q`")
    print(f"{'':18}{'median':>10}{'min':>10}{'max':>10}{'vs busybox':>12}")
    for name, samples in times.items():
        median = statistics.median(samples)
        row = f"{median * 1000:8.1f}ms{min(samples) * 1000:8.1f}ms{max(samples) * 1000:8.1f}ms"
        print(f"{name:18}{row}{median / base_median:11.2f}x")


if __name__ == "__main__":
    main()
