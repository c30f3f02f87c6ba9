"""The fault-injection switch (ctrsh/fault.py): honoured only when armed, announced, strictly parsed."""

from __future__ import annotations

import pytest

from ctrsh import fault
from ctrsh.fault import Fault, from_env

ARMED = {fault.ARM: fault.ARMED}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("fail-before:1", Fault("fail-before", 1)),
        ("fail-after:37", Fault("fail-after", 37)),
        ("kill:63", Fault("kill", 63)),
    ],
)
def test_armed_values(value: str, expected: Fault, capsys: pytest.CaptureFixture[str]) -> None:
    assert from_env({fault.VAR: value, **ARMED}) == expected
    assert (
        capsys.readouterr().err
        == f"ctrsh: TEST FAULT INJECTION (CTRSH_FAULT={value}): this apply is broken on purpose\n"
    )


def test_not_armed_is_ignored_with_a_warning(capsys: pytest.CaptureFixture[str]) -> None:
    assert from_env({fault.VAR: "kill:3"}) is None
    assert from_env({fault.VAR: "kill:3", fault.ARM: "1"}) is None
    err = capsys.readouterr().err
    assert err.count("ignoring CTRSH_FAULT=kill:3: fault injection is for tests and needs CTRSH_FAULT_INJECTION=") == 2


@pytest.mark.parametrize("value", ["kill", "kill:0", "kill:-1", "kill:3 ", "explode:3", "fail:3", "kill:1234567"])
def test_malformed_is_ignored(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert from_env({fault.VAR: value, **ARMED}) is None
    assert f"ignoring CTRSH_FAULT={value}: expected one of" in capsys.readouterr().err


def test_absent_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    assert from_env({}) is None and from_env({**ARMED}) is None
    assert capsys.readouterr().err == ""


def test_which_step() -> None:
    f = Fault("fail-after", 5)
    assert f.fails_after(5) and not f.fails_after(4) and not f.fails_before(5)
    assert Fault("fail-before", 2).fails_before(2)


def test_target_exists_tells_what_an_undo_would_remove(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ctrsh.engine import target_exists

    d = tmp_path / "d"
    rm = ("rm", "-rf", "--one-file-system", str(d))
    assert target_exists(rm) is False and target_exists(("rmdir", "--ignore-fail-on-non-empty", str(d))) is False
    d.mkdir()
    assert target_exists(rm) is True and target_exists(("rmdir", "--ignore-fail-on-non-empty", str(d))) is True
    assert target_exists(("umount", "--recursive", str(d))) is False  # not a mount point
    assert target_exists(("ip", "netns", "delete", "ctrsh-surely-not-there")) is False
    assert target_exists(("sh", "-euc", "whatever", "ctrsh-undo")) is None  # its shape does not tell
