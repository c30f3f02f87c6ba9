"""Images, volumes and /etc files: recipe errors (exact messages), the pure text makers,
the tarball entry check and the image symlink check, and what the plan contains."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from pathlib import Path

import pytest

from ctrsh.compile import compile_plan
from ctrsh.errors import RecipeError
from ctrsh.facts import Facts
from ctrsh.hostfiles import HostFiles, TarballFact, check_members, escape_problem, scan_tarball
from ctrsh.phases.etcfiles import hosts_text, resolv_text
from ctrsh.recipe import parse

HEAD = "name: x\nprocess: {args: [a]}\n"


def compiled(text: str, files: HostFiles | None = None) -> list[str]:
    facts = dataclasses.replace(Facts(), files=files or HostFiles(base="/r"))
    return [s.command for s in compile_plan(parse(HEAD + text, "r.yaml"), facts).steps]


def problems(text: str, files: HostFiles | None = None) -> list[str]:
    with pytest.raises(RecipeError) as e:
        compiled(text, files)
    assert e.value.exit_code == 2
    return str(e.value).splitlines()


LOAD_CASES = [
    ("two sources", "rootfs: {busybox: {}, directory: {path: /x}}\n",
     "r.yaml:3:9: rootfs: set exactly one of: busybox, debootstrap, tarball, directory"),
    ("suite missing", "rootfs: {debootstrap: {variant: minbase}}\n", "r.yaml:3:23: missing required key 'rootfs.debootstrap.suite'"),
    ("bad suite", "rootfs: {debootstrap: {suite: 'a b'}}\n",
     "r.yaml:3:31: rootfs.debootstrap.suite: 'a b' is not a Debian suite name (e.g. bookworm, trixie)"),
    ("bad variant", "rootfs: {debootstrap: {suite: bookworm, variant: minbas}}\n",
     "r.yaml:3:50: rootfs.debootstrap.variant: unknown value 'minbas'; did you mean 'minbase'? (one of: minbase, buildd, fakechroot, -)"),
    ("bad package", "rootfs: {debootstrap: {suite: bookworm, include: [Bad_Pkg]}}\n",
     "r.yaml:3:50: rootfs.debootstrap.include: 'Bad_Pkg' is not a Debian package name"),
    ("bad mirror", "rootfs: {debootstrap: {suite: bookworm, mirror: 'ftp://x y'}}\n",
     "r.yaml:3:49: rootfs.debootstrap.mirror: 'ftp://x y' is not a mirror URL (http://, https:// or file://, no spaces, commas or quotes)"),
    ("relative target", "rootfs: {busybox: {}}\nmounts: [{type: tmpfs, target: data}]\n",
     "r.yaml:4:32: mounts[0].target: 'data' must be an absolute path inside the container"),
    ("dotdot target", "rootfs: {busybox: {}}\nmounts: [{type: tmpfs, target: /a/../etc}]\n",
     "r.yaml:4:32: mounts[0].target: '/a/../etc' must not contain '..'"),
    ("unnormalised target", "rootfs: {busybox: {}}\nmounts: [{type: tmpfs, target: /a//b/}]\n",
     "r.yaml:4:32: mounts[0].target: '/a//b/' is not normalised; write '/a/b'"),
    ("proc target", "rootfs: {busybox: {}}\nmounts: [{type: tmpfs, target: /proc/sys}]\n",
     "r.yaml:4:32: mounts[0].target: '/proc/sys': /proc is mounted when the container starts and would hide it"),
    ("bad size", "rootfs: {busybox: {}}\nmounts: [{type: tmpfs, target: /t, size: lots}]\n",
     "r.yaml:4:42: mounts[0].size: 'lots' is not a size: a number with k, m or g (e.g. 64M)"),
    ("bad type", "rootfs: {busybox: {}}\nmounts: [{type: nfs, target: /t}]\n",
     "r.yaml:4:17: mounts[0].type: unknown value 'nfs' (one of: bind, volume, tmpfs)"),
    ("bad dns", "rootfs: {busybox: {}}\ndns: [8.8.8]\n", "r.yaml:4:6: dns: '8.8.8' is not an IP address"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in LOAD_CASES], ids=[c[0] for c in LOAD_CASES])
def test_recipe_errors(text: str, expected: str) -> None:
    with pytest.raises(RecipeError) as e:
        parse(HEAD + text, "r.yaml")
    assert str(e.value) == expected


def test_mount_rules_checked_against_the_host_all_at_once() -> None:
    text = (
        "rootfs: {busybox: {}}\nmounts:\n"
        "  - {type: bind, source: /nope, target: /a}\n"
        "  - {type: volume, target: /b}\n"
        "  - {type: volume, source: 'bad/name', target: /c}\n"
        "  - {type: tmpfs, source: x, target: /a}\n"
        "  - {type: bind, source: /ok, target: /etc/hosts, size: 1M}\n"
    )
    files = HostFiles(base="/r", kinds={"/nope": "missing", "/ok": "dir"})
    assert problems(text, files) == [
        "r.yaml:5:26: mounts[0].source: '/nope' does not exist on the host (ctrsh never creates a bind source)",
        "r.yaml:6:5: mounts[1]: missing required key 'source' for a volume mount",
        "r.yaml:7:28: mounts[2].source: 'bad/name' is not a volume name (letters, digits, '_', '.', '-'; at most 64)",
        "r.yaml:8:27: mounts[3].source: a tmpfs has no source",
        "r.yaml:8:38: mounts[3].target: '/a' is already the target of mounts[0]",
        "r.yaml:9:39: mounts[4].target: '/etc/hosts' is the container's own, made by ctrsh (see `dns:` for resolv.conf)",
        "r.yaml:9:57: mounts[4].size: size and mode are for tmpfs, not bind",
    ]


def test_rootfs_sources_checked_against_the_host() -> None:
    assert problems("rootfs: {tarball: {path: img.zip}}\n") == [
        "r.yaml:3:26: '/r/img.zip' is not a .tar, .tar.gz, .tar.xz or .tar.zst file name"
    ]
    assert problems("rootfs: {tarball: {path: img.tar}}\n") == ["r.yaml:3:26: '/r/img.tar' does not exist"]
    files = HostFiles(
        base="/r",
        kinds={"/r/img.tar": "file"},
        tarballs={"/r/img.tar": TarballFact("ab", "entry '/x' has an absolute path")},
    )
    assert problems("rootfs: {tarball: {path: img.tar}}\n", files) == [
        "r.yaml:3:26: tarball refused: entry '/x' has an absolute path; nothing was unpacked"
    ]
    assert problems("rootfs: {directory: {path: /srv/root}}\n") == ["r.yaml:3:28: '/srv/root' does not exist"]
    files = HostFiles(base="/r", kinds={"/srv/a:b": "dir"})
    assert problems("rootfs: {directory: {path: '/srv/a:b'}}\n", files)[0].endswith(
        "cannot be an overlay layer: it must not be '/' or contain ',', ':', quotes, backslashes or white space"
    )


def test_directory_source_is_never_written() -> None:
    files = HostFiles(base="/r", kinds={"/srv/root": "dir"})
    cmds = compiled("rootfs: {directory: {path: /srv/root}}\n", files)
    touching = [c for c in cmds if "/srv/root" in c]
    assert len(touching) == 2  # the overlay's lowerdir, and the record of which image is in use
    assert "lowerdir=/srv/root,upperdir=" in touching[1] or "lowerdir=/srv/root,upperdir=" in touching[0]
    assert not any(c.startswith(("rm ", "mkdir ", "chmod ", "mv ", "tar ")) and "/srv/root" in c for c in cmds)


def test_image_names_are_keyed_by_their_parameters() -> None:
    def lower(text: str) -> str:
        return next(c for c in compiled(text) if "lowerdir=" in c).split("lowerdir=")[1].split(",")[0]

    a = lower("rootfs: {debootstrap: {suite: bookworm}}\n")
    assert a == lower("rootfs: {debootstrap: {suite: bookworm, variant: minbase}}\n")
    assert a != lower("rootfs: {debootstrap: {suite: bookworm, include: [curl]}}\n")
    assert a != lower("rootfs: {debootstrap: {suite: bookworm, mirror: 'http://m/debian'}}\n")
    assert a.startswith("/var/lib/ctrsh/images/bookworm-minbase-")


def test_readonly_root_mounts_the_overlay_ro() -> None:
    cmds = compiled("rootfs: {busybox: {}}\nreadonly: true\n")
    assert any("mount -t overlay overlay -o ro,lowerdir=" in c for c in cmds)


def test_hosts_names_the_container() -> None:
    assert hosts_text("web.example") == (
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tweb.example web\n"
    )
    assert hosts_text(None) == "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def test_resolv_conf_drops_loopback_nameservers() -> None:
    host = "# host\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 10.0.0.2\nsearch example\n"
    assert resolv_text(host, None, own_net=True) == "# host\nnameserver 10.0.0.2\nsearch example\n"
    assert resolv_text(host, None, own_net=False) == host  # the host's net ns: its resolvers work
    only_local = "nameserver 127.0.0.53\noptions edns0\n"
    text = resolv_text(only_local, None, own_net=True)
    assert text.startswith("# ctrsh: the host's only nameservers (127.0.0.53) are on loopback")
    assert "nameserver" not in text.replace("nameservers", "") and text.endswith("options edns0\n")
    assert resolv_text(host, ["192.0.2.1"], own_net=True) == "nameserver 192.0.2.1\n# host\nsearch example\n"
    assert resolv_text("", None, own_net=True) == ""


def tar_of(*members: tuple[str, str]) -> tarfile.TarFile:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind.startswith("sym:"):
                info.type, info.linkname = tarfile.SYMTYPE, kind[4:]
            elif kind.startswith("hard:"):
                info.type, info.linkname = tarfile.LNKTYPE, kind[5:]
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 8, 0
            tar.addfile(info, io.BytesIO(b"") if info.isfile() else None)
    buf.seek(0)
    return tarfile.open(fileobj=buf)


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        ((("./bin", "dir"), ("./bin/sh", "file"), ("./lib", "sym:/usr/lib"), ("./usr/lib/x", "file")), None),
        ((("a/../../x", "file"),), "entry 'a/../../x' contains '..'"),
        ((("/etc/x", "file"),), "entry '/etc/x' has an absolute path"),
        ((("l", "sym:/etc"), ("l/passwd", "file")), "entry 'l/passwd' goes through the symlink 'l' in the archive"),
        ((("./l", "sym:../.."), ("./l/x/y", "file")), "entry './l/x/y' goes through the symlink 'l' in the archive"),
        ((("l", "sym:/etc"), ("l", "dir"), ("l/x", "file")), None),  # replaced by a real dir before use
        ((("h", "hard:../etc/shadow"),), "hardlink 'h' points outside the image ('../etc/shadow')"),
        ((("l", "sym:/etc"), ("h", "hard:l/shadow")), "hardlink 'h' points through a symlink ('l/shadow')"),
        ((("tmp/sda", "chr"),), "entry 'tmp/sda' is a device node outside /dev"),
        ((("dev/null", "chr"),), None),
    ],
)
def test_tarball_entries(members: tuple[tuple[str, str], ...], expected: str | None) -> None:
    assert check_members(tar_of(*members)) == expected


def test_scan_hashes_what_it_checks(tmp_path: Path) -> None:
    import hashlib
    import subprocess

    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "sh").write_text("x")
    for name, flag in (("a.tar", ""), ("a.tar.gz", "z"), ("a.tar.xz", "J"), ("a.tar.zst", "--zstd")):
        args = ["tar", "-C", str(root), "-c"] + ([flag] if flag.startswith("-") else [f"-{flag}"] if flag else [])
        subprocess.run([*args, "-f", str(tmp_path / name), "."], check=True)
        fact = scan_tarball(str(tmp_path / name))
        assert fact == TarballFact(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest(), None), name
    (tmp_path / "bad.tar.gz").write_bytes(b"not gzip")
    assert (scan_tarball(str(tmp_path / "bad.tar.gz")).problem or "").startswith("not a readable tar archive")


def test_symlinked_targets_in_an_image(tmp_path: Path) -> None:
    root = tmp_path / "img"
    (root / "usr" / "lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "abs").symlink_to("/etc")
    (root / "up").symlink_to("../../../..")
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")
    assert escape_problem(str(root), "/lib/x") is None  # stays inside
    assert escape_problem(str(root), "/new/dir") is None  # made fresh in the upper layer
    msg = escape_problem(str(root), "/abs/cron.d")
    assert msg is not None and msg.startswith("'/abs/cron.d' goes through the image's symlink /abs -> /etc")
    assert "('/etc/cron.d')" in msg  # what it means inside the container
    assert escape_problem(str(root), "/up/x") is not None
    assert "/var/run -> /run" in (escape_problem(str(root), "/var/run/app") or "")
    assert os.path.isdir(root / "usr" / "lib")


USERNS = "namespaces: [user, mount, pid]\n"


def test_shifted_copy_is_keyed_by_image_and_maps() -> None:
    def lower(text: str) -> str:
        return next(c for c in compiled(text) if "lowerdir=" in c).split("lowerdir=")[1].split(",")[0]

    base = "/var/lib/ctrsh/images/busybox"
    plain = lower("rootfs: {busybox: {}}\n")
    a = lower("rootfs: {busybox: {}}\n" + USERNS)
    assert plain == base and a.startswith(base + ".shift-") and len(a) == len(base) + 7 + 12
    assert a == lower("rootfs: {busybox: {}}\n" + USERNS + "uid_map: ['0  100000 65536']\n")  # same map, spaced
    assert a != lower("rootfs: {busybox: {}}\n" + USERNS + "uid_map: ['0 200000 65536']\n")
    assert a != lower("rootfs: {busybox: {}}\n" + USERNS + "gid_map: ['0 100000 1000']\n")
    deb = lower("rootfs: {debootstrap: {suite: bookworm}}\n" + USERNS)
    assert deb.split(".shift-")[1] == a.split(".shift-")[1] and deb.split(".shift-")[0] != base


def test_userns_plan_owns_what_root_inside_writes() -> None:
    text = ("rootfs: {busybox: {}}\n" + USERNS + "uid_map: ['0 200000 1000']\ngid_map: ['0 300000 1000']\n"
            "mounts: [{type: volume, source: v, target: /v}, {type: tmpfs, target: /t}]\n")  # fmt: skip
    cmds = compiled(text)
    assert any(c.startswith("chown -R 200000:300000 /var/lib/ctrsh/containers/x/upper ") for c in cmds)
    assert "install -d -m 0755 -o 200000 -g 300000 /var/lib/ctrsh/volumes/v" in cmds
    assert any("mount -t tmpfs -o nosuid,nodev,uid=200000,gid=300000 tmpfs" in c for c in cmds)
    unshare = next(c for c in cmds if c.startswith("unshare --user="))
    assert unshare.endswith("--propagation private true")  # no command before the maps are written
    start = cmds[-1]
    assert "nsenter --user=/proc/self/fd/4 -- unshare --pid" in start and "ctrsh-start . /" in start


def test_userns_with_a_directory_rootfs_is_refused() -> None:
    files = HostFiles(base="/r", kinds={"/srv/root": "dir"})
    assert problems("rootfs: {directory: {path: /srv/root}}\n" + USERNS, files) == [
        "r.yaml:4:13: a user namespace needs a copy of the image with its owners shifted, made once and cached; a "
        "rootfs directory may change under it: use a tarball of it (tar -C DIR -c .) instead"
    ]


def test_userns_with_a_terminal_is_refused() -> None:
    text = "name: x\nprocess: {args: [a], terminal: true}\nrootfs: {busybox: {}}\n" + USERNS
    with pytest.raises(RecipeError) as e:
        compile_plan(parse(text, "r.yaml"), Facts())
    assert str(e.value) == (
        "r.yaml:2:32: a terminal is not supported with a user namespace yet: making the pty PID 1's controlling "
        "terminal takes it from script(1)'s session, which needs CAP_SYS_ADMIN on the host"
    )


def test_images_count_and_rmi_removes_shifted_copies(tmp_path: Path) -> None:
    from ctrsh.images import listing, remove

    facts = dataclasses.replace(Facts(), state_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "data"))
    images = tmp_path / "data" / "images"
    for d in ("busybox", "busybox.shift-0123456789ab", "busybox.shift-0123456789ab.tmp-x", "busybox.shift-bad",
              "other"):  # fmt: skip
        (images / d).mkdir(parents=True)
        (images / d / "f").write_text("1234")
    (images / "busybox.shift-0123456789ab.source").write_text("busybox shifted\n")
    (tmp_path / "run" / "c1").mkdir(parents=True)
    (tmp_path / "run" / "c1" / "image").write_text(f"{images}/busybox.shift-0123456789ab\n")
    rows = {im.name: im for im in listing(facts)}
    assert set(rows) == {"busybox", "busybox.shift-bad", "other"}  # a copy is counted under its image
    assert (rows["busybox"].shifted, rows["busybox"].used_by) == (1, ("c1",))
    with pytest.raises(Exception, match="in use by: c1"):
        remove(facts, "busybox")
    (tmp_path / "run" / "c1" / "image").unlink()
    remove(facts, "busybox")
    left = sorted(p.name for p in images.iterdir())
    # the copy and its .source went with the image; a build in progress and a name ctrsh never
    # makes are not touched
    assert left == ["busybox.lock", "busybox.shift-0123456789ab.lock", "busybox.shift-0123456789ab.tmp-x",
                    "busybox.shift-bad", "other"]  # fmt: skip


def test_use_records_of_any_state_dir_keep_an_image(tmp_path: Path) -> None:
    """An apply records its use in the data dir (rootfs.use_steps); rmi of another state dir sees it
    while that container exists (its state dir, or its name's lock held); a stale one is left."""
    import fcntl

    from ctrsh.facts import Paths
    from ctrsh.images import remove, use_record, users
    from ctrsh.lock import lock_path

    data = tmp_path / "data"
    mine = dataclasses.replace(Facts(), state_dir=str(tmp_path / "run"), data_dir=str(data))
    other = dataclasses.replace(mine, state_dir=str(tmp_path / "other"))
    image = data / "images" / "busybox"
    (image / "bin").mkdir(parents=True)
    record = use_record(Paths(other, "web"), str(image))
    Path(record).write_text(f"{image}.shift-0123456789ab\n{other.state_dir}\nweb\n")
    assert users(mine, str(image)) == []  # web's state dir is gone and no one holds its lock: stale
    os.makedirs(lock_path(other.state_dir, "web").rsplit("/", 1)[0], exist_ok=True)
    with open(lock_path(other.state_dir, "web"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # its apply runs
        assert users(mine, str(image)) == [f"web (state dir {other.state_dir})"]
        with pytest.raises(Exception, match=r"in use by: web \(state dir"):
            remove(mine, "busybox")
    (tmp_path / "other" / "web").mkdir(parents=True)  # the container exists (until destroy)
    assert users(mine, str(image)) == [f"web (state dir {other.state_dir})"]
    (tmp_path / "other" / "web").rmdir()
    remove(mine, "busybox")
    assert os.path.exists(record) and not image.exists()


def test_the_use_record_undo_is_one_destroy_accepts() -> None:
    from ctrsh.facts import Paths
    from ctrsh.owner import known_undo

    facts = dataclasses.replace(Facts(), state_dir="/srv/st", data_dir="/srv/data")
    steps = compile_plan(parse("name: web\nrootfs: {busybox: {}}\nprocess: {args: [a]}\n", "r.yaml"), facts).steps
    (record,) = [s for s in steps if "ctrsh-use" in s.argv]
    assert record.undo is not None and known_undo(record.undo, Paths(facts, "web"))
    assert not known_undo(record.undo, Paths(facts, "db"))  # another container's
    assert not known_undo(("rm", "-f", "/srv/data/images/busybox"), Paths(facts, "web"))
    assert not known_undo(("rm", "-f", "/etc/passwd.use-x-web"), Paths(facts, "web"))
