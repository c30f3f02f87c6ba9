"""Host facts read without `ldd`: the loader's own listing must match what `ldd` says."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ctrsh import facts


def _ldd(program: str) -> tuple[str, tuple[str, ...]]:
    out = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    loader, libs = "", []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            loader = parts[0]
    return loader, tuple(libs)


@pytest.mark.parametrize("tool", ["setpriv", "unshare"])
def test_deps_match_ldd(tool: str) -> None:
    program = shutil.which(tool, path=facts.SAFE_PATH)
    if program is None or shutil.which("ldd") is None:
        pytest.skip(f"{tool} or ldd missing on this host")
    assert facts.elf_interpreter(program) is not None
    assert facts.setpriv_deps(program) == _ldd(program)


def test_not_elf_has_no_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\necho hi\n")
    truncated = tmp_path / "truncated"
    truncated.write_bytes(b"\x7fELF\x02\x01\x01")
    lying = tmp_path / "lying"  # an ELF header whose program headers point past the end
    lying.write_bytes(b"\x7fELF\x02\x01" + b"\0" * 26 + (10**6).to_bytes(8, "little") + b"\0" * 14 + b"\x38\0\x05\0")
    for path in (script, truncated, lying, tmp_path / "missing"):
        assert facts.elf_interpreter(str(path)) is None
