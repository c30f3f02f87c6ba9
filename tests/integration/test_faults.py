"""Fault injection: every step of every shipped recipe, made to fail or killed, leaves the host as it was.

For each recipe in recipes/ (and one more with a user-supplied `rootfs: directory:`), the plan is
compiled here, so new steps and new recipes are covered without touching this file. For each
step K (numbered as `ctrsh plan` counts them and as "step K of N failed" names them):

  fail-before:K  step K fails without running      -> apply exits 125, the host is as before
  fail-after:K   step K runs, then reports failure  -> the same (its undo must cope with both)
  kill:K         ctrsh SIGKILLs itself after step K -> `ctrsh destroy NAME` (--force for a running
                                                       detached container), then the same

"As before" is the conftest's host snapshot (mounts, links, netns, addresses, routes, firewall,
sysctls, cgroups, state and data dirs, processes) and canary files, compared byte for byte with
their mode and owner: in a bind-mounted volume, in a named volume and in a user-supplied rootfs
directory.

Cost. Each case is one apply process (and one destroy for a kill), so:
  - the same case is run once: two recipes whose first K steps are the same commands (up to the
    container's name and which image is the overlay's read-only lower layer; skipped steps and
    builds completed before K left out) give the same fault at K (e.g. the busybox build and the
    namespaces of every recipe); they differ only after K, and nothing after K runs. A canary dir
    is named only by the steps that mount it, so the cases before those cannot reach it;
  - `fail-before:K` only where step K has an undo: without one it is `fail-after:K-1` again;
  - processes are forked from this one, which has ctrsh imported: the CLI runs as
    `python -m ctrsh` would, without ~200 ms of interpreter start and imports each;
  - long-running commands (web's httpd, ssh's sshd, the fork bomb) are replaced by short ones in the
    test's copy of the recipe: only the start step changes;
  - steps that only run when an image is missing (its build, skipped once it is cached) run in a
    fresh data dir of their own, made again for each case. The Debian build's download itself
    (debootstrap, and what needs its result) takes about a minute a case: those cases run only with
    CTRSH_TEST_FAULT_SLOW=1, and are skipped (and counted) otherwise.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sh  # noqa: F401  (imported once here, so the forked applies need not)
import yaml

import ctrsh.cli
from ctrsh import fault
from ctrsh.plan import Plan
from tests.hostsnap import snapshot

from .conftest import ROOT
from .test_images import DEBIAN_CACHE, debian_data  # noqa: F401  (a fixture)
from .test_ssh import ssh_data  # noqa: F401  (a fixture)

MODES = ("fail-before", "fail-after", "kill")
# Every single-container recipe. A group (`containers:`, pod.yaml) runs each member through the
# same apply, so its steps are covered here one recipe at a time; a member failing, signals and
# kill -9 + destroy of a group are test_pod's (a known gap: no per-step faults inside a group).
SHIPPED = sorted(
    p.stem for p in (ROOT / "recipes").glob("*.yaml") if not re.search(r"^containers:", p.read_text(), re.M)
)
RECIPES = [*SHIPPED, "rootfs-directory"]
# Shipped recipes that need the cached Debian image (built once by test_images / test_ssh).
DEBIAN = {"debian": "debian_data", "ssh": "ssh_data"}
# Recipes whose command runs until stopped (or for seconds): a short one in the test's copy.
SHORT = {"web": ["/bin/sh", "-c", "mkdir -p /www"], "ssh": ["/bin/sh", "-c", "test -x /usr/sbin/sshd"],
         "forkbomb": ["/bin/sh", "-c", "echo bomb"], "shell": ["/bin/sh", "-c", "exit 0"]}  # fmt: skip
DETACHED = {"sleeper"}  # run with apply -d, as their README example does
SLOW = os.environ.get("CTRSH_TEST_FAULT_SLOW") == "1"
ARMED = {fault.ARM: fault.ARMED}

SEEN: set[object] = set()  # case signatures already run in this session (across recipes)
COUNTS: dict[str, int] = {}


@dataclass
class Case:
    mode: str
    k: int
    fresh: bool  # in a fresh data dir: step k builds what the cached data dir has already


def norm(text: str, name: str) -> str:
    return re.sub(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", "NAME", text)


def signature(plan: Plan, case: Case, detached: bool, data: str) -> object:
    """What a fault at step k depends on: the steps that run until then, the mode, and where it runs
    (nothing after step k runs). Names aside, and which image: the image is the overlay's read-only
    lower layer, inside the container's mount namespace, and never changed. Not counted: steps
    skipped because their result exists (they run nothing; a shared one journals its undo, which is
    counted), and a build that completed before k (its result is kept, its undos lapsed)."""

    def n(text: str) -> str:
        return re.sub(r"/images/[^/\s,:]+", "/images/IMAGE", norm(text, plan.name).replace(data, "DATA"))

    steps = plan.steps[: case.k]
    building = {s.creates for s in plan.steps[case.k - 1 :] if s.keep}
    items: list[object] = []
    for s in steps:
        if s.keep and s.creates not in building:
            continue  # a build done before step k
        if s.creates and os.path.lexists(s.creates):  # skipped
            if s.undo and not s.keep:
                items.append(("shared", tuple(map(n, s.undo))))
            continue
        items.append((tuple(map(n, s.argv)), tuple(map(n, s.undo or ())), n(s.creates or ""), s.foreground))
    return (case.mode, detached and plan.steps[case.k - 1].foreground, tuple(items))


# --- processes, forked with ctrsh imported ------------------------------------------------------


def run_cli(args: list[str], env: dict[str, str], out: Path, timeout: float = 120) -> tuple[int, str]:
    """Run `ctrsh ARGS` in a forked child: (exit code, or -N for signal N; its stderr)."""
    err = out.with_suffix(".err")
    pid = os.fork()
    if pid == 0:  # the child: as `python -m ctrsh ARGS` with this environment, cwd and stdio
        code = 1
        try:
            os.chdir(ROOT)
            os.environ.clear()
            os.environ.update(env)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            o = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            e = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(o, 1)
            os.dup2(e, 2)
            for fd in (null, o, e):
                os.close(fd)
            sys.stdin = open(0, closefd=False)  # noqa: SIM115
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            signal.signal(signal.SIGINT, signal.default_int_handler)  # the dispositions Python starts with
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            sys.argv = ["ctrsh", *args]
            ctrsh.cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with __import__("contextlib").suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    end = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"ctrsh {' '.join(args)}: no end after {timeout} s")
        time.sleep(0.005)
    return os.waitstatus_to_exitcode(status), err.read_text(errors="replace")


# --- canaries -----------------------------------------------------------------------------------


def plant(directory: Path, tag: str) -> None:
    """Files ctrsh did not make, of several modes and owners, a link and a subdir."""
    (directory / "canary-sub").mkdir(parents=True, exist_ok=True)
    for i, (mode, uid) in enumerate([(0o644, 0), (0o600, 1234), (0o4755, 0), (0o000, 4321)]):
        p = directory / f"canary-{i}" if i % 2 else directory / "canary-sub" / f"canary-{i}"
        p.write_bytes(hashlib.sha256(f"{tag}-{i}".encode()).digest() * (i + 1))
        os.chown(p, uid, uid + 1)
        os.chmod(p, mode)
    link = directory / "canary-link"
    if not link.is_symlink():
        link.symlink_to("canary-1")


def canaries(directory: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for p in sorted(directory.rglob("canary*")):
        st = p.lstat()
        body = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
        out[str(p)] = (hashlib.sha256(str(body).encode() if isinstance(body, str) else body).hexdigest(),
                       stat.filemode(st.st_mode), st.st_uid, st.st_gid)  # fmt: skip
    assert out, f"no canaries in {directory}"
    return out


# --- the recipes as the test runs them -----------------------------------------------------------


@dataclass
class Setup:
    name: str
    recipe: Path
    data: str  # the data dir of cached images
    detached: bool
    canary_dirs: list[Path]
    volumes: list[str]  # named volumes: made on first use and kept, by design


def prepare(which: str, tmp: Path, data: str, busybox: Path) -> Setup:
    """The test's copy of a recipe: renamed, short command where needed, files it names beside it."""
    name = f"f-{which}"
    if which == "rootfs-directory":
        rootfs = tmp / "user-rootfs"
        subprocess.run(["cp", "-a", str(busybox), str(rootfs)], check=True)
        plant(rootfs / "root", "rootfs")
        vol = tmp / "user-vol"
        plant(vol, "vol")
        doc = {"name": name, "rootfs": {"directory": {"path": str(rootfs)}},
               "mounts": [{"type": "bind", "source": str(vol), "target": "/vol"}],
               "process": {"args": ["/bin/sh", "-c", "cat /vol/canary-1 >/dev/null; ls /root"]}}  # fmt: skip
        canary_dirs = [rootfs / "root", vol]
    else:
        doc = yaml.safe_load((ROOT / f"recipes/{which}.yaml").read_text())
        doc["name"] = name
        if "hostname" in doc:
            doc["hostname"] = name  # renamed with it, so recipes that differ only by names share their cases
        if which in SHORT:
            doc["process"]["args"] = SHORT[which]
        canary_dirs = [tmp]
    volumes = [m["source"] for m in doc.get("mounts", []) if m.get("type") == "volume"]
    for m in doc.get("mounts", []):
        if m.get("type") == "bind" and m["source"] == "authorized_keys":
            (tmp / "authorized_keys").write_text(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFaultInjectionTestKeyOnly test\n"
            )
    if which == "tarball":
        subprocess.run(["tar", "-C", str(busybox), "-cf", str(tmp / "rootfs.tar"), "."], check=True)
    for v in volumes:  # a named volume that exists already: it holds data ctrsh must keep
        d = Path(data) / "volumes" / v
        d.mkdir(parents=True, exist_ok=True)
        plant(d, f"volume-{v}")
        canary_dirs.append(d)
    if which != "rootfs-directory":
        plant(tmp, which)
    path = tmp / f"{which}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Setup(name, path, data, which in DETACHED, canary_dirs, volumes)


def compile_plan(recipe: Path, state: str, data: str) -> Plan:
    return ctrsh.cli._plan(str(recipe), state, data)[0]


def cases(plan: Plan, fresh_plan: Plan) -> Iterator[Case]:
    for k, step in enumerate(plan.steps, 1):
        fresh = bool(step.creates and os.path.lexists(step.creates))  # skipped here: cached already
        assert fresh_plan.steps[k - 1].why == step.why
        for mode in MODES:
            # Failing before it runs differs from failing after step k-1 only by step k's undo, which
            # must then cope with a step that never ran; without an undo the two are the same case.
            if mode != "fail-before" or step.undo or k == 1:
                yield Case(mode, k, fresh)


def slow(plan: Plan, case: Case) -> bool:
    """Needs a real debootstrap run (a download of about a minute)."""
    ran = plan.steps[: case.k - 1 if case.mode == "fail-before" else case.k]
    return any(s.progress and any("debootstrap" in a for a in s.argv) for s in ran)


# --- the test -----------------------------------------------------------------------------------


@pytest.fixture
def busybox(dirs: dict[str, str], tmp_path: Path) -> Path:
    image = Path(dirs["CTRSH_DATA_DIR"]) / "images" / "busybox"
    if not image.exists():
        r = subprocess.run(
            [sys.executable, "-m", "ctrsh", "apply", "-q", str(ROOT / "recipes/hello.yaml")],
            env={**os.environ, **dirs}, cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
    return image


@pytest.mark.parametrize("which", RECIPES)
def test_every_step_fails_or_is_killed_and_the_host_is_as_before(
    which: str, dirs: dict[str, str], tmp_path: Path, busybox: Path, request: pytest.FixtureRequest
) -> None:
    state = dirs["CTRSH_STATE_DIR"]
    data = request.getfixturevalue(DEBIAN[which]) if which in DEBIAN else dirs["CTRSH_DATA_DIR"]
    work = tmp_path / "recipe"
    work.mkdir()
    setup = prepare(which, work, data, busybox)
    fresh_data = str(tmp_path / "fresh-data")
    try:
        _run_all(setup, state, fresh_data, tmp_path)
    finally:
        for v in setup.volumes:
            shutil.rmtree(Path(data) / "volumes" / v)
        shutil.rmtree(fresh_data, ignore_errors=True)


def _run_all(setup: Setup, state: str, fresh_data: str, tmp: Path) -> None:
    base = {**os.environ, "CTRSH_STATE_DIR": state}
    apply_args = ["apply", *(["-d"] if setup.detached else []), str(setup.recipe)]
    # Once without a fault: the recipe works, and its images are cached.
    code, err = run_cli(apply_args, {**base, "CTRSH_DATA_DIR": setup.data}, tmp / "warm.out", timeout=900)
    assert code == 0, err[-3000:]
    if setup.detached:
        code, err = run_cli(["destroy", "--force", "-t", "0", setup.name], {**base, "CTRSH_DATA_DIR": setup.data},
                            tmp / "warm.out")  # fmt: skip
        assert code == 0, err
    plan = compile_plan(setup.recipe, state, setup.data)
    fresh_plan = compile_plan(setup.recipe, state, fresh_data)
    assert len(plan.steps) == len(fresh_plan.steps)
    marks = [canaries(d) for d in setup.canary_dirs]
    failures: list[str] = []

    def snap(d: str) -> dict[str, object]:
        out = snapshot(state, d)
        if d.startswith(DEBIAN_CACHE):  # shared with other test runs: only this container's residue counts
            out["data dir"] = [e for e in out["data dir"] if setup.name in e]  # type: ignore[attr-defined]
        return out

    before = {False: snap(setup.data)}

    ran = skipped = deduped = 0
    started = time.monotonic()
    for case in cases(plan, fresh_plan):
        the_plan, data = (fresh_plan, fresh_data) if case.fresh else (plan, setup.data)
        if slow(the_plan, case) and case.fresh and not SLOW:
            skipped += 1
            continue
        if case.fresh:
            shutil.rmtree(fresh_data, ignore_errors=True)
        sig = signature(the_plan, case, setup.detached, data)
        if sig in SEEN:
            deduped += 1
            continue
        else:
            SEEN.add(sig)
        if case.fresh:
            before[True] = snap(fresh_data)
        ran += 1
        problem = _one(setup, the_plan, case, {**base, "CTRSH_DATA_DIR": data}, apply_args, tmp)
        after = snap(data)
        if case.fresh:  # a named volume made on first use is kept, by design (README)
            after["data dir"] = [d for d in after["data dir"] if d not in {f"volumes/{v}" for v in setup.volumes}]  # type: ignore[attr-defined]
        changed = {k: (v, after[k]) for k, v in before[case.fresh].items() if after[k] != v}
        if changed:
            problem = (problem or "") + f"\n  the host changed: {_diff(changed)}"
        if [canaries(d) for d in setup.canary_dirs] != marks:
            problem = (problem or "") + "\n  CANARY FILES CHANGED"
        if problem:
            step = the_plan.steps[case.k - 1]
            failures.append(f"{case.mode}:{case.k} ({step.phase}: {step.command[:160]}){problem}")
            _clean(setup, state, data, tmp)
            if snap(data) != before[case.fresh]:
                _force_clean(setup, state, data)
                now = snap(data)
                if now != before[case.fresh]:
                    failures.append(
                        f"  ... and it could not be cleaned up: {_diff({k: (v, now[k]) for k, v in before[case.fresh].items() if now[k] != v})}"
                    )
                    before[case.fresh] = now
    took = time.monotonic() - started
    COUNTS[setup.name] = ran
    print(f"\n{setup.name}: {ran} fault cases in {took:.1f} s ({took / max(ran, 1):.2f} s each), "
          f"{deduped} the same as earlier ones, {skipped} slow ones skipped (CTRSH_TEST_FAULT_SLOW=1 runs them)")  # fmt: skip
    if report := os.environ.get("CTRSH_TEST_FAULT_REPORT"):  # a dir outside the sandbox's private /tmp
        Path(report, f"{setup.name}.txt").write_text("\n".join(failures) + "\n")
    assert not failures, f"{len(failures)} of {ran} fault cases left the host changed:\n" + "\n".join(failures)


def _one(setup: Setup, plan: Plan, case: Case, env: dict[str, str], apply_args: list[str], tmp: Path) -> str | None:
    """Run one fault case; return what went wrong, if anything (the snapshot is compared after)."""
    out = tmp / "case.out"
    env = {**env, **ARMED, fault.VAR: f"{case.mode}:{case.k}"}
    code, err = run_cli(apply_args, env, out)
    if "fault injected" not in err:
        return f"\n  the fault did not strike (exit {code}):\n{err[-1500:]}"
    if case.mode == "kill":
        if code != -signal.SIGKILL:
            return f"\n  apply was not killed (exit {code}):\n{err[-1500:]}"
        running = setup.detached and plan.steps[case.k - 1].foreground
        args = ["destroy", *(["--force", "-t", "0"] if running else []), setup.name]
        env = {k: v for k, v in env.items() if k != fault.VAR}
        code, derr = run_cli(args, env, out)
        if code != 0 and not (code == 2 and "no container" in derr):
            return f"\n  destroy exited {code}:\n{derr[-1500:]}"
        return None
    if code != 125:
        return f"\n  apply exited {code}, not 125:\n{err[-1500:]}"
    if "undo failed" in err:
        return f"\n  an undo failed:\n{err[-1500:]}"
    return None


def _clean(setup: Setup, state: str, data: str, tmp: Path) -> None:
    env = {**os.environ, "CTRSH_STATE_DIR": state, "CTRSH_DATA_DIR": data}
    run_cli(["destroy", "--force", "-t", "0", setup.name], env, tmp / "clean.out")


def _diff(changed: dict[str, tuple[object, object]]) -> str:
    out = []
    for key, (was, now) in changed.items():
        if isinstance(was, list) and isinstance(now, list):
            out.append(f"{key}: +{sorted(set(now) - set(was))} -{sorted(set(was) - set(now))}")
        elif isinstance(was, dict) and isinstance(now, dict):
            out.append(
                f"{key}: {[(k, was.get(k), now.get(k)) for k in set(was) | set(now) if was.get(k) != now.get(k)]}"
            )
        else:
            out.append(f"{key}: {str(was)[-300:]!r} -> {str(now)[-300:]!r}")
    return "; ".join(out)


def _force_clean(setup: Setup, state: str, data: str) -> None:
    """What ctrsh left after a hole was found, removed by the test itself so the next cases start clean."""
    from ctrsh.facts import Paths, detect
    from ctrsh.phases import cgroups

    paths = Paths(detect(state, data), setup.name)
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    for p in reversed(points):
        if p.startswith((f"{paths.state}/", f"{paths.layer}/")) or p in (paths.state, paths.layer):
            subprocess.run(["umount", "-l", p], capture_output=True)
    subprocess.run(["ip", "netns", "delete", paths.netns], capture_output=True)
    subprocess.run(list(cgroups.kill_undo(paths.facts, setup.name)), capture_output=True)
    for d in (paths.state, paths.layer, *Path(data).glob(f"*.tmp-{setup.name}"),
              *Path(data, "images").glob(f"*.tmp-{setup.name}")):  # fmt: skip
        shutil.rmtree(d, ignore_errors=True)
    Path(f"{state}.{setup.name}.lock").unlink(missing_ok=True)
    with __import__("contextlib").suppress(OSError):
        os.rmdir(state)
