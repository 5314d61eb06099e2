"""Element transactions sent straight to the kernel (cni_plugins/kernel/nfnetlink.py)
leave our sets as libnftables lists them: hash sets and verdict maps of
IPv4 and IPv6 addresses, interval sets with ranges starting at zero and
ending at the last address, in random sequences of changes; and a batch
the kernel refuses changes nothing."""
import os
import random

import pytest

from netpolicy.nft import Kernel, NftError
from netpolicy.ruleset import Chain, SetSpec, Table, build, transaction

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")

LAST4, LAST6 = 2**32 - 1, 2**128 - 1
SPECS = {"h4": SetSpec(("ipv4_addr",)), "h6": SetSpec(("ipv6_addr",)),
         "i4": SetSpec(("ipv4_addr",), interval=True), "i6": SetSpec(("ipv6_addr",), interval=True),
         "m4": SetSpec(("ipv4_addr",), verdicts=True), "m6": SetSpec(("ipv6_addr",), verdicts=True)}


def table(elements):
    return Table("inet", "pnltest", sets=dict(SPECS), elements=elements,
                 chains={"x": Chain([], by_content=True), "y": Chain([], by_content=True)})


def random_elements(rng):
    found = {name: {} for name in SPECS}
    for v in rng.sample(range(1, 100), 20):
        found["h4"][((v, v),)] = None
        found["m4"][((v, v),)] = ("goto", rng.choice("xy"))
    for v in rng.sample(range(1, 100), 5):
        found["h6"][((v << 64, v << 64),)] = None
        found["m6"][((v << 64, v << 64),)] = ("goto", rng.choice("xy"))
    cuts = sorted(rng.sample(range(1, 200), 8))
    ranges = [(cuts[i], cuts[i + 1] - 1) for i in range(0, 8, 2)]
    if rng.random() < 0.3:
        ranges = [(0, 0)] + ranges
    if rng.random() < 0.3:
        ranges.append((250, LAST4))
    found["i4"] = {(r,): None for r in ranges}
    if rng.random() < 0.5:
        found["i6"] = {((1 << 100, (1 << 100) + 10),): None, ((LAST6 - 5, LAST6),): None}
    return found


@pytest.fixture
def kernel(netns):
    """Kernel calls made inside our netns (setns for this thread only)."""
    from cni_plugins.kernel.netns import entered

    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        with entered(fd):
            yield Kernel()
    finally:
        os.close(fd)


def test_element_batches_leave_what_libnftables_lists(kernel):
    rng = random.Random(5)
    applied = table({name: {} for name in SPECS})
    kernel.apply(build(applied))
    applied = applied.as_applied()
    for step in range(40):
        wanted = table(random_elements(rng))
        commands = transaction(applied, wanted)
        assert {kind for c in commands for body in c.values() for kind in body} == {"element"}
        kernel.apply(commands, {("inet", name): spec for name, spec in SPECS.items()})
        assert kernel.read_table("inet", "pnltest").elements == wanted.elements, f"step {step}"
        applied = wanted.as_applied()


def test_a_refused_batch_changes_nothing(kernel):
    kernel.apply(build(table({name: {} for name in SPECS})))
    specs = {("inet", "h4"): SPECS["h4"], ("inet", "gone"): SPECS["h4"]}
    with pytest.raises(NftError, match="No such file or directory.*inet pnltest gone"):
        kernel.apply([{"add": {"element": {"family": "inet", "table": "pnltest", "name": "h4", "elem": ["10.0.0.1"]}}},
                      {"add": {"element": {"family": "inet", "table": "pnltest", "name": "gone", "elem": ["10.0.0.2"]}}}],
                     specs)
    assert kernel.read_table("inet", "pnltest").elements["h4"] == {}
