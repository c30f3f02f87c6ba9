"""The `network:` section: exact recipe errors, and what the bridge plan is made of (pure)."""

from __future__ import annotations

import dataclasses
import shlex

import pytest

from ctrsh.compile import compile_plan
from ctrsh.errors import RecipeError
from ctrsh.facts import Facts, NetworkFacts
from ctrsh.recipe import parse

BASE = "name: box\nrootfs: {busybox: {}}\nprocess: {args: [/bin/true]}\n"


def plan_of(text: str, facts: Facts = Facts()):  # type: ignore[no-untyped-def]  # noqa: B008
    return compile_plan(parse(text, "r.yaml"), facts)


def errors(text: str, facts: Facts = Facts()) -> list[str]:  # noqa: B008
    with pytest.raises(RecipeError) as e:
        plan_of(text, facts)
    return str(e.value).splitlines()


def test_default_is_none_as_before() -> None:
    argvs = [s.argv for s in plan_of(BASE).steps if s.phase == "network"]
    assert argvs == [("ip", "-n", "ctrsh-box", "link", "set", "lo", "up")]
    assert plan_of(BASE) == plan_of(BASE + "network: {mode: none}\n")


def test_host_mode_has_no_net_namespace_but_keeps_uts() -> None:
    plan = plan_of(BASE + "network: {mode: host}\n")
    text = "\n".join(s.command for s in plan.steps)
    assert "netns" not in text and "--net" not in text
    assert "--uts=" in text and "hostname box" in text


def test_modes_and_namespaces_must_agree() -> None:
    assert errors(BASE + "namespaces: [mount, uts]\nnetwork: {mode: bridge}\n") == [
        "r.yaml:5:17: mode 'bridge' needs the 'net' namespace, which 'namespaces' (line 4) leaves out; "
        "add 'net' there, or use mode: host"
    ]
    assert errors(BASE + "namespaces: [mount, net]\nnetwork:\n  mode: host\n") == [
        "r.yaml:6:9: mode 'host' uses the host's network, but 'namespaces' (line 4) asks for 'net'; remove 'net' there"
    ]
    assert errors(BASE + "namespaces: [mount]\nnetwork: {mode: none}\n")[0].startswith("r.yaml:5:17: mode 'none' needs")


def test_bridge_keys_need_mode_bridge() -> None:
    assert errors(BASE + "network:\n  publish: ['80:80']\n  subnet: 10.1.0.0/24\n") == [
        "r.yaml:5:12: network.publish: only for mode: bridge (not 'none')",
        "r.yaml:6:11: network.subnet: only for mode: bridge (not 'none')",
    ]


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("{mode: bridge, publish: ['80']}", "network.publish: [0]: '80' is not HOST_PORT:CONTAINER_PORT[/tcp|/udp]"),
        (
            "{mode: bridge, publish: ['8080:80', '8080:81']}",
            "network.publish: [1]: host port 8080/tcp is published twice",
        ),
        ("{mode: bridge, publish: ['70000:80']}", "network.publish: [0]: '70000:80' is not"),
        ("{mode: bridge, publish: ['1:2/sctp']}", "network.publish: [0]: '1:2/sctp' is not"),
        ("{mode: bridge, subnet: 10.88.0.1/16}", "network.subnet: '10.88.0.1/16' is not an IPv4 subnet"),
        ("{mode: bridge, subnet: 10.0.0.0/31}", "network.subnet: '10.0.0.0/31' is too small"),
        ("{mode: bridge, subnet: 0.0.0.0/0}", "network.subnet: '0.0.0.0/0' is not in a private range"),
        ("{mode: bridge, subnet: 127.0.0.0/8}", "network.subnet: '127.0.0.0/8' is not in a private range"),
        ("{mode: bridge, bridge: 'br.0'}", "network.bridge: 'br.0' is not a usable bridge name"),
        ("{mode: bridge, bridge: abcdefghijklmnop}", "network.bridge: 'abcdefghijklmnop' is not a usable bridge name"),
        ("{mode: bridge, address: 10.88.0.5/16}", "network.address: '10.88.0.5/16' is not an IPv4 address"),
        ("{mode: bridge, address: 10.99.0.5}", "network.address: 10.99.0.5 is not a host of 10.88.0.0/16"),
        ("{mode: bridge, address: 10.88.0.1}", "network.address: 10.88.0.1 is the gateway"),
        ("{mode: bridge, address: 10.88.255.255}", "network.address: 10.88.255.255 is not a host"),
        ("{mode: bridge, bridge_tool: brctl2}", "network.bridge_tool: unknown value 'brctl2'; did you mean 'brctl'?"),
        ("{mode: bridged}", "network.mode: unknown value 'bridged'; did you mean 'bridge'?"),
    ],
)
def test_bad_network_values(network: str, message: str) -> None:
    got = errors(BASE + f"network: {network}\n")
    assert len(got) == 1 and message in got[0], got


def test_address_and_port_taken_by_others() -> None:
    facts = dataclasses.replace(
        Facts(), network=NetworkFacts(leases=(("10.88.0.5", "other"),), ports=(("tcp-8080", "other"),))
    )
    assert errors(BASE + "network:\n  mode: bridge\n  address: 10.88.0.5\n  publish: ['8080:80']\n", facts) == [
        "r.yaml:6:12: network.address: 10.88.0.5 is taken by container 'other'",
        "r.yaml:7:13: network.publish[0]: host port 8080/tcp is published by container 'other'",
    ]


def test_next_free_address_skips_leases() -> None:
    leases = (("10.88.0.2", "a"), ("10.88.0.3", "b"), ("10.88.0.5", "c"))
    facts = dataclasses.replace(Facts(), network=NetworkFacts(leases=leases))
    plan = plan_of(BASE + "network: {mode: bridge}\n", facts)
    assert ("ip", "-n", "ctrsh-box", "addr", "add", "10.88.0.4/16", "dev", "eth0") in [s.argv for s in plan.steps]
    unreadable = dataclasses.replace(Facts(), network=NetworkFacts(readable=False))
    claim = plan_of(BASE + "network: {mode: bridge}\n", unreadable).steps
    assert any("a guess: the registry is not readable without root" in s.why for s in claim)


def test_a_bridge_in_use_with_another_subnet() -> None:
    facts = dataclasses.replace(Facts(), network=NetworkFacts(subnet="10.77.0.0/16"))
    assert errors(BASE + "network: {mode: bridge}\n", facts) == [
        "r.yaml:4:10: bridge 'ctrsh0' is in use by other containers with subnet 10.77.0.0/16, not 10.88.0.0/16"
    ]


def test_bridge_plan_every_change_has_an_undo_and_every_rule_a_tag() -> None:
    plan = plan_of(BASE + "network: {mode: bridge, publish: ['8080:80', '5353:53/udp']}\n")
    net = [s for s in plan.steps if s.phase == "network"]
    for s in net:
        assert shlex.split(s.command) == list(s.argv)
        if s.argv[0] == "iptables":
            assert s.argv[-2:] == ("--comment", "ctrsh:box"), s.command
            assert s.undo and s.undo[0] == "sh" and s.undo[-2:] == ("--comment", "ctrsh:box")
        if s.argv[0] == "flock":
            assert s.undo and s.undo[0] == "flock"
            if "iptables" in s.argv[4]:
                assert s.argv[-2:] == ("--comment", "ctrsh:bridge/ctrsh0")
    no_undo = [s.argv for s in net if s.undo is None and s.argv[:2] != ("ip", "-n")]  # inside the netns: goes with it
    veth = next(s.argv[3] for s in net if s.argv[:3] == ("ip", "link", "add"))
    assert (
        no_undo
        == [  # plugged in, up, moved: deleting the veth (its undo) undoes all three
            ("ip", "link", "set", veth, "master", "ctrsh0"),
            ("ip", "link", "set", veth, "up"),
            ("ip", "link", "set", "c" + veth[1:], "netns", "ctrsh-box"),
        ]
    )
    dnat = [s.argv for s in net if "DNAT" in s.argv]
    assert len(dnat) == 4 and all(a[a.index("addrtype") + 1 : a.index("addrtype") + 3] == ("--dst-type", "LOCAL")
                                  for a in dnat)  # fmt: skip
    assert dnat[2][dnat[2].index("-p") : dnat[2].index("-p") + 4] == ("-p", "udp", "--dport", "5353")


def test_veth_names_are_unique_and_short() -> None:
    names = set()
    for n in ("a", "b", "x" * 63):
        plan = plan_of(BASE.replace("name: box", f"name: {n}") + "network: {mode: bridge}\n")
        add = next(s.argv for s in plan.steps if s.argv[:3] == ("ip", "link", "add") and "veth" in s.argv)
        host, peer = add[3], add[-1]
        assert len(host) <= 15 and len(peer) <= 15
        names |= {host, peer}
    assert len(names) == 6


def test_brctl_variant() -> None:
    plan = plan_of(BASE + "network: {mode: bridge, bridge: br7, bridge_tool: brctl}\n")
    text = "\n".join(s.command for s in plan.steps)
    assert "brctl addbr" in text and "brctl addif br7 veth" in text and " type bridge" not in text


def test_registry_survey_and_leftover_releases(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Leases of containers whose state dir is gone count as free; destroy finds claims a killed apply held."""
    from ctrsh import ipam

    facts = Facts(state_dir=str(tmp_path))
    leases = tmp_path / "network" / "leases-ctrsh0"
    ports = tmp_path / "network" / "ports"
    leases.mkdir(parents=True)
    ports.mkdir()
    (tmp_path / "alive").mkdir()
    (leases / "10.88.0.2").write_text("alive\n")
    (leases / "10.88.0.3").write_text("gone\n")  # its ctrsh was killed and its state dir removed
    (ports / "tcp-8080").write_text("alive\n")
    nf = ipam.survey(facts, "ctrsh0")
    assert nf.leases == (("10.88.0.2", "alive"),) and nf.ports == (("tcp-8080", "alive"),)
    plan = compile_plan(parse(BASE + "network: {mode: bridge}\n", "r.yaml"), dataclasses.replace(facts, network=nf))
    assert any(s.argv[-1] == "10.88.0.3" and "ctrsh-claim" in s.argv for s in plan.steps)  # the stale one is free
    releases = ipam.leftover_releases(facts, "alive")
    assert [r[-3:] for r in releases] == [(str(leases), "alive", "10.88.0.2"), (str(ports), "alive", "tcp-8080")]
    assert all(r[:2] == ("flock", str(tmp_path)) for r in releases)


def test_container_mode() -> None:
    plan = plan_of(BASE + "network: {mode: container, container: web}\n")
    text = "\n".join(s.command for s in plan.steps)
    assert "ip netns add" not in text and "ip netns delete" not in text  # not ours: nothing to make or remove
    assert plan.steps[-1].argv.count("--net=/run/netns/ctrsh-web") == 1
    assert errors(BASE + "network:\n  mode: container\n") == [
        "r.yaml:5:9: mode 'container' needs `container: NAME`, the one to join"
    ]
    assert errors(BASE + "network: {container: web}\n") == [
        "r.yaml:4:22: network.container: only for mode: container (not 'none')"
    ]
    assert errors(BASE + "network: {mode: container, container: box, publish: ['1:1']}\n") == [
        "r.yaml:4:39: network.container: a container cannot join itself",
        "r.yaml:4:53: network.publish: only for mode: bridge (not 'container')",
    ]


def test_subnet_overlapping_a_host_route() -> None:
    facts = dataclasses.replace(Facts(), network=NetworkFacts(routes=(("10.0.0.0/8", "eth0"),)))
    assert errors(BASE + "network: {mode: bridge}\n", facts) == [
        "r.yaml:4:10: subnet 10.88.0.0/16 overlaps the host's route to 10.0.0.0/8 (dev eth0): pick another subnet"
    ]
    fine = dataclasses.replace(Facts(), network=NetworkFacts(routes=(("192.168.1.0/24", "eth0"),)))
    assert plan_of(BASE + "network: {mode: bridge}\n", fine)
