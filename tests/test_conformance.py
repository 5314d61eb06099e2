"""The conformance suite against our plugins, the reference plugins and
deliberately broken plugins (tests/broken_plugins/)."""
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

from conformance import report
from conformance.checks import CHECKS, FAIL, NA, PASS, Outcome, Report, run_suite
from conformance.cli import main as cli_main
from conformance.config import SuiteConfig
from conformance.derive import Fresh, derive
from conformance.netconf import ConfigError
from conformance.text import elide, wrap
from pycni.install import install, search_path

REFERENCE_BIN = "/usr/lib/cni"
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conformance", "configs")
BROKEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken_plugins")

root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


def config(name, versions=None):
    cfg = SuiteConfig.load(os.path.join(CONFIGS, f"{name}.yaml"))
    if versions:
        cfg.versions = versions
    return cfg


def by_id(report):
    return {o.id: o for o in report.outcomes}


@pytest.fixture(scope="module")
def our_bin(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfbin")
    install(str(d))
    return str(d)


@pytest.fixture(scope="module")
def reference_bridge():
    if not os.path.exists(os.path.join(REFERENCE_BIN, "bridge")):
        pytest.skip("reference plugins not installed")
    return run_suite(REFERENCE_BIN, config("bridge"), label="reference")


# --- ours ------------------------------------------------------------------------------
@root
@pytest.mark.parametrize("name", ["bridge", "loopback"])
def test_ours_pass_every_applicable_check(our_bin, name):
    report = run_suite(our_bin, config(name), label="pycni")
    results = by_id(report)
    assert report.versions == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    failed = [f"{o.id}: {o.evidence}" for o in report.failed]
    assert not failed, "\n".join(failed)
    # 1.1.0 is claimed, so GC and STATUS are exercised, not skipped
    assert results["status"].status == PASS
    assert results["gc"].status == PASS
    assert results["check@0.3.0"].status == NA  # CHECK came with 0.4.0
    assert not report.forced_cleanup, report.forced_cleanup


# --- reference ----------------------------------------------------------------------------
@root
def test_reference_bridge_real_behaviour(reference_bridge):
    r = by_id(reference_bridge)
    # Debian's plugins 1.1.1 speak up to 1.0.0: no GC/STATUS
    assert reference_bridge.versions == ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
    assert r["gc"].status == NA and r["status"].status == NA
    assert "add@1.1.0" not in r
    for v in reference_bridge.versions:
        assert r[f"add@{v}"].status == PASS
        assert r[f"result.present@{v}"].status == PASS
        assert r[f"cleanup@{v}"].status == PASS  # DEL with the netns alive cleans up
    # DEL itself succeeds without the netns ...
    assert r["del.missing-netns"].status == PASS
    # ... but leaves its ipMasq rules behind: it learns the addresses from
    # inside the (gone) netns.
    leak = r["cleanup.missing-netns"]
    assert leak.status == FAIL
    assert "firewall" in leak.evidence and "CNI-" in leak.evidence
    # without CNI_NETNS it only releases the IPAM reservation: the host veth
    # and the masquerade rules stay (the spec asks to clean up what it can)
    assert r["del.no-netns"].status == FAIL
    assert "host link veth" in r["del.no-netns"].evidence and "CNI-" in r["del.no-netns"].evidence
    # error objects are right (code and msg), just without cniVersion
    for cid in ("errors.decode", "errors.version", "errors.env"):
        assert r[cid].status == PASS
        assert "lacks cniVersion" in r[cid].evidence
    assert r["concurrency"].status == PASS
    # the suite removed the leaked rules afterwards
    assert any("CNI-" in item for item in reference_bridge.forced_cleanup)


@root
def test_reference_loopback_omits_ip_version_in_legacy_results():
    if not os.path.exists(os.path.join(REFERENCE_BIN, "loopback")):
        pytest.skip("reference plugins not installed")
    report = run_suite(REFERENCE_BIN, config("loopback", ["0.4.0", "1.0.0"]), label="reference")
    r = by_id(report)
    assert r["result.version@0.4.0"].status == FAIL
    assert 'lacks "version"' in r["result.version@0.4.0"].evidence
    assert r["result.version@1.0.0"].status == PASS
    assert r["chain.prevresult"].status == PASS
    assert r["del.missing-netns"].status == PASS


# --- broken plugins ---------------------------------------------------------------------------
_WRAPPER = """#!{python} -IS
import sys
sys.path[:0] = {paths!r}
import runpy
runpy.run_path({script!r}, run_name="__main__")
"""


def broken_bin(tmp_path, name):
    d = tmp_path / f"broken-{name}"
    install(str(d))
    target = d / "bridge"
    target.write_text(_WRAPPER.format(python=sys.executable, paths=[BROKEN] + search_path(),
                                      script=os.path.join(BROKEN, f"{name}.py")))
    target.chmod(0o755)
    return str(d)


# broken plugin -> checks that must catch it
CAUGHT_BY = {
    "nonjson_errors": ["errors.decode", "errors.version", "errors.env"],
    "del_needs_netns": ["del.missing-netns"],
    "phantom_ip": ["result.present@0.4.0", "result.present@1.0.0"],
    "wrong_version": ["result.version@0.4.0"],
    "leaky_ipam": ["cleanup@0.4.0", "cleanup@1.0.0", "cleanup.missing-netns"],
}
EVIDENCE = {
    "nonjson_errors": "not an error object",
    "del_needs_netns": "does not exist",
    "phantom_ip": "not configured",
    "wrong_version": "cniVersion is '1.1.0'",
    "leaky_ipam": "IPAM reservation",
}


@root
@pytest.mark.parametrize("name", sorted(CAUGHT_BY))
def test_broken_plugin_is_caught(tmp_path, name):
    report = run_suite(broken_bin(tmp_path, name), config("bridge", ["0.4.0", "1.0.0"]), label=name)
    r = by_id(report)
    for cid in CAUGHT_BY[name]:
        assert r[cid].status == FAIL, f"{cid} missed {name}: {r[cid].evidence}"
        assert EVIDENCE[name] in r[cid].evidence, r[cid].evidence
    # and the plugin is otherwise a working bridge
    assert r["add@1.0.0"].status == PASS
    if name != "wrong_version":
        assert r["result.version@1.0.0"].status == PASS


# --- CLI -------------------------------------------------------------------------------------
@root
def test_cli_exit_status_and_json(our_bin, tmp_path, capsys):
    # our loopback up to 1.0.0 passes everything: exit 0
    assert cli_main(["--bin-dir", our_bin, "--config", "loopback", "--versions", "0.4.0,1.0.0", "-q"]) == 0
    out = capsys.readouterr().out
    assert "version.output" in out and "FAIL" not in out
    # a broken plugin makes the command fail, so CI can gate on it
    bad = broken_bin(tmp_path, "del_needs_netns")
    assert cli_main(["--bin-dir", bad, "--config", os.path.join(CONFIGS, "bridge.yaml"),
                     "--versions", "1.0.0", "-q", "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    checks = {c["id"]: c for c in doc[0]["checks"]}
    assert checks["del.missing-netns"]["result"] == "fail"
    assert checks["del.missing-netns"]["section"].startswith("2 Execution Protocol")
    assert checks["del.missing-netns"]["requirement"]


# --- deployed network configs: derived per run ------------------------------------------------
def fresh(tag="t"):
    """Deterministic fresh names: the n-th subnet handed out is 10.23n.0.0
    (or fd00:n::) with the prefix asked for."""
    handed = []

    def subnet(prefixlen, family):
        n = len(handed)
        net = ipaddress.ip_network((f"10.23{n}.0.0" if family == 4 else f"fd00:{n}::", prefixlen))
        handed.append(net)
        return net

    return Fresh(f"cf-{tag}", f"cf{tag}", f"/tmp/{tag}", subnet)


def changes(derived):
    return {c.where: (c.before, c.after) for c in derived.changes}


def assert_changed(derived, expected):
    """``expected``: where -> (as written, as run), among the changes said."""
    said = changes(derived)
    assert {k: said.get(k) for k in expected} == expected


def test_derive_moves_subnet_and_everything_in_it_consistently():
    net = {"cniVersion": "1.0.0", "name": "mynet", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True,
         "ipam": {"type": "host-local", "dataDir": "/var/lib/cni/mine",
                  "ranges": [[{"subnet": "10.88.0.0/16", "rangeStart": "10.88.0.10", "rangeEnd": "10.88.0.250",
                               "gateway": "10.88.0.1"}]],
                  "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.50.0/24", "gw": "10.88.0.1"},
                             {"dst": "10.88.0.0/16"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}
    written = json.loads(json.dumps(net))
    d = derive(net, fresh())
    assert net == written                                   # the input is not touched
    range0 = "plugins[0].ipam.ranges[0][0]."
    assert_changed(d, {
        "name": ("mynet", "cf-t"),
        "plugins[0].bridge": ("cni0", "cft"),
        "plugins[0].ipam.dataDir": ("/var/lib/cni/mine", "/tmp/t/ipam"),
        # offsets kept: a /16 whose addresses lie in its first /24 becomes a /24
        range0 + "subnet": ("10.88.0.0/16", "10.230.0.0/24"),
        range0 + "rangeStart": ("10.88.0.10", "10.230.0.10"),
        range0 + "rangeEnd": ("10.88.0.250", "10.230.0.250"),
        range0 + "gateway": ("10.88.0.1", "10.230.0.1"),
        "plugins[0].ipam.routes[1].gw": ("10.88.0.1", "10.230.0.1"),
        "plugins[0].ipam.routes[2].dst": ("10.88.0.0/16", "10.230.0.0/24")})
    ipam = d.network["plugins"][0]["ipam"]
    assert ipam["routes"][:2] == [{"dst": "0.0.0.0/0"}, {"dst": "192.168.50.0/24", "gw": "10.230.0.1"}]
    # everything else as written
    assert d.network["plugins"][1] == written["plugins"][1]
    assert d.network["plugins"][0]["ipMasq"] is True and d.network["cniVersion"] == "1.0.0"
    assert d.bridges == ["cft"]
    assert "10.88." not in json.dumps(d.network) and "cni0" not in json.dumps(d.network)


def test_derive_defaults_that_name_the_machine_are_replaced_too():
    """No bridge key means cni0, no dataDir means /var/lib/cni/networks
    (and /run/cni/tuning): the derived config names private ones."""
    net = {"cniVersion": "0.4.0", "name": "n", "plugins": [
        {"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.10.0.0/16"}}, {"type": "tuning"}]}
    assert_changed(derive(net, fresh()), {
        "plugins[0].bridge": ("(default cni0)", "cft"),
        "plugins[0].ipam.dataDir": ("(default /var/lib/cni/networks)", "/tmp/t/ipam"),
        "plugins[1].dataDir": ("(default /run/cni/tuning)", "/tmp/t/tuning"),
        "plugins[0].ipam.subnet": ("10.10.0.0/16", "10.230.0.0/24")})


def test_derive_makes_room_for_addresses_deep_in_a_subnet_and_handles_ipv6_and_static():
    net = {"cniVersion": "1.0.0", "name": "n", "plugins": [
        {"type": "bridge", "ipam": {"type": "host-local", "ranges": [
            [{"subnet": "172.16.0.0/12", "rangeStart": "172.16.4.1", "rangeEnd": "172.16.7.254"}],
            [{"subnet": "fd12:3456:789a::/48", "gateway": "fd12:3456:789a::1"}]]}},
        {"type": "macvlan", "master": "eth9",
         "ipam": {"type": "static", "addresses": [{"address": "192.168.1.5/24", "gateway": "192.168.1.1"}],
                  "routes": [{"dst": "192.168.1.128/25", "gw": "192.168.1.1"}]}}]}
    d = derive(net, fresh())
    assert_changed(d, {
        # offsets up to 7*256+254 need a /21: still under the /16 the suite allows
        "plugins[0].ipam.ranges[0][0].subnet": ("172.16.0.0/12", "10.230.0.0/21"),
        "plugins[0].ipam.ranges[0][0].rangeEnd": ("172.16.7.254", "10.230.7.254"),
        "plugins[0].ipam.ranges[1][0].subnet": ("fd12:3456:789a::/48", "fd00:1::/64"),
        "plugins[0].ipam.ranges[1][0].gateway": ("fd12:3456:789a::1", "fd00:1::1"),
        "plugins[1].ipam.addresses[0].address": ("192.168.1.5/24", "10.232.0.5/24"),
        "plugins[1].ipam.routes[0].dst": ("192.168.1.128/25", "10.232.0.128/25")})
    # the macvlan master is the host's device: kept, and said so
    assert d.network["plugins"][1]["master"] == "eth9"
    assert any("master 'eth9' kept" in n for n in d.notes)
    assert any("type 'macvlan' is one the suite has no special knowledge of" in n for n in d.notes)


@pytest.mark.parametrize("ipam, message", [
    ({"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16", "rangeStart": "10.99.0.1"}]]},
     "ipam.ranges[0][0].rangeStart 10.99.0.1 lies outside ipam.ranges[0][0].subnet 10.88.0.0/16"),
    ({"type": "host-local", "subnet": "10.0.0.0/8", "rangeStart": "10.3.0.1"},
     "ipam.subnet 10.0.0.0/8: the addresses named in it span more than a /16"),
    ({"type": "host-local", "subnet": "banana"}, "ipam.subnet 'banana' is not a subnet"),
    ({"type": "host-local", "ranges": [{"subnet": "10.1.0.0/16"}]}, "ipam.ranges is not a list of range sets"),
    ({"type": "static", "addresses": [{"address": "10.1.0.5"}]},
     "addresses[0].address '10.1.0.5' is not an address/prefix"),
])
def test_derive_refuses_what_it_cannot_relocate(ipam, message):
    with pytest.raises(ConfigError) as e:
        derive({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "ipam": ipam}, fresh())
    assert message in str(e.value) and "\n" not in str(e.value)


def test_derive_keeps_unknown_ipam_as_written():
    net = {"cniVersion": "1.0.0", "name": "n", "type": "ipvlan", "ipam": {"type": "dhcp", "subnet": "x"}}
    d = derive(net, fresh())
    assert d.network["ipam"] == net["ipam"]
    assert any("ipam: type 'dhcp' is unknown to the suite" in n for n in d.notes)
    assert any("master unset: ipvlan uses the device of the host's default route" in n for n in d.notes)


# --- one-line refusals ------------------------------------------------------------------------------
BAD_CONFIGS = {   # file -> (content, what the one line says)
    "not-json.conflist": ('{"cniVersion": "1.0.0", "name": "x", "plugins": [',
                          "not valid JSON: Expecting value at line 1"),
    "not-yaml.yaml": ("a: [1, 2\nb: }", "neither JSON nor YAML"),
    "empty.conf": ("", "empty"),
    "a-list.json": ("[1, 2]", "not a JSON or YAML object but a list"),
    "neither.conf": ('{"cniVersion": "1.0.0", "name": "x"}', "neither a CNI network config (no \"type\")"),
    "no-plugins.conflist": ('{"cniVersion": "1.0.0", "name": "x", "plugins": []}',
                            "\"plugins\" is not a non-empty list"),
    "no-type.conflist": ('{"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "bridge"}, {"mtu": 5}]}',
                         "plugins[1] has no \"type\""),
    "bad-type.conf": ('{"cniVersion": "1.0.0", "name": "x", "type": "../bridge"}',
                      "type '../bridge' is not a plugin file name"),
    "ipam-no-type.conf": ('{"cniVersion": "1.0.0", "name": "x", "type": "bridge", "ipam": {"subnet": "10.1.0.0/16"}}',
                          "ipam has no \"type\""),
    "version.conf": ('{"cniVersion": "0.5.0", "name": "x", "type": "bridge"}',
                     "cniVersion '0.5.0' is not a CNI spec version"),
    "no-name.conf": ('{"cniVersion": "1.0.0", "type": "bridge"}', "the network has no \"name\""),
    "bad-name.conf": ('{"cniVersion": "1.0.0", "name": "my net", "type": "bridge"}',
                      "invalid characters in network name"),
    "range.conf": ('{"cniVersion": "1.0.0", "name": "x", "type": "bridge", "ipam": {"type": "host-local", '
                   '"ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.89.0.1"}]]}}', "cannot relocate the range"),
    "no-such-type.conf": ('{"cniVersion": "1.0.0", "name": "x", "type": "no-such-plugin"}',
                          "type 'no-such-plugin' is not an executable in"),
    "no-such-ipam.conf": ('{"cniVersion": "1.0.0", "name": "x", "type": "bridge", "ipam": {"type": "no-such-ipam"}}',
                          "ipam.type 'no-such-ipam' is not an executable in"),
    "typo.yaml": ("network: {cniVersion: 1.0.0, name: x, type: bridge}\nconcurency: 3\n", "unknown key 'concurency'"),
    "suite-main.yaml": ("network: {cniVersion: 1.0.0, name: x, type: bridge}\nmain: loopback\n",
                        "main 'loopback' is not a type of the network"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_unusable_config_is_refused_in_one_line(tmp_path, capsys, name):
    text, message = BAD_CONFIGS[name]
    path = tmp_path / name
    path.write_text(text)
    assert cli_main(["--bin-dir", REFERENCE_BIN, "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"pycni conformance: {path}: "), err
    assert message in err, err


@pytest.mark.parametrize("args, message", [
    (["--config", "/nonexistent/net.conflist"], "/nonexistent/net.conflist: no such file"),
    (["--config", "/tmp"], "/tmp: a directory; name one config file in it"),
    (["--config", "bridge", "--versions", "0.4.0,2.0"], "versions 2.0: the suite tests 0.3.0"),
    (["--config", "bridge", "--bin-dir", "/nonexistent"], "/nonexistent: no such bin dir"),
])
def test_unusable_arguments_are_refused_in_one_line(capsys, args, message):
    assert cli_main(["--bin-dir", REFERENCE_BIN, *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_plugin_missing_from_the_bin_dir_is_named_through_pycni(our_bin, tmp_path):
    """Through the real `pycni conformance` entry: ptp is not one of ours."""
    path = tmp_path / "ptp.conflist"
    path.write_text(json.dumps(PTP))
    out = subprocess.run([sys.executable, "-m", "pycni.cli", "conformance", "--bin-dir", our_bin,
                          "--config", str(path)], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr == f"pycni conformance: {path}: plugins[0].type 'ptp' is not an executable in {our_bin}\n"


def test_help_describes_deployed_configs():
    out = subprocess.run([sys.executable, "-m", "pycni.cli", "conformance", "--help"],
                         capture_output=True, text=True)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert ".conflist" in text and "/etc/cni/net.d" in text and "told apart by content" in text
    assert "fresh 10.2xx subnet" in text and "what was changed" in text
    assert "generic" in text and "n/a with the reason" in text


# --- tables: words are never cut -----------------------------------------------------------------
def _words(text):
    """The words of ``text``, an elision's "…" and the punctuation it drops aside."""
    return {w.rstrip(",;:") for w in text.replace("…", " ").split()}


def test_text_wraps_and_elides_at_word_boundaries():
    text = "cleanup.missing-netns failed: firewall: -A POSTROUTING -s 10.202.92.4/32 -m comment"
    for width in range(8, 60):
        for line in wrap(text, width):
            assert _words(line) <= _words(text)
        short = elide(text, width)
        assert len(short) <= width or " " not in short
        assert _words(short) <= _words(text) and short.endswith("…")
        assert text.startswith(short[:-1])


def test_table_keeps_check_descriptions_whole():
    long = ("host link veth2d00eba0 left; firewall: ip saddr 10.208.207.7 counter packets 0 bytes 0 jump "
            "CNI-a066f7b4f5af731ee096936b; firewall: -A POSTROUTING -s 10.208.207.7/32 -m comment " * 3)
    outcomes = [Outcome(c.id, FAIL if i % 2 else PASS, long) for i, c in enumerate(CHECKS)]
    reports = [Report(label, "/bin", "x.conflist", ["1.0.0"], outcomes) for label in
               ("pycni", "a label far longer than its column")]
    one = report.table(reports[0])
    assert one.count("\n") > len(CHECKS)
    rows = one.split("-" * 100)[1].strip("\n").split("\n")
    start = report.ID_WIDTH + report.MARK_WIDTH + 2
    sections, current = [], None
    for row in rows:
        if row[:report.ID_WIDTH].strip():
            current = []
            sections.append(current)
        current.append(row[start:start + report.SECTION_WIDTH].strip())
        assert _words(row[start + report.SECTION_WIDTH:]) <= _words(long)
    assert [" ".join(w for w in s if w) for s in sections] == [c.section for c in CHECKS]
    both = report.side_by_side(reports)
    assert "a label far…" in both
    requirements = " ".join(both.split("requirements:")[1].split())
    for c in CHECKS:
        assert f"{c.id} ({c.section}): {c.requirement}" in requirements
    for line in both.split("\n"):
        assert _words(line) <= _words(both.replace("\n", " ") + " " + long)


# --- deployed configs, run for real ----------------------------------------------------------------
PTP = {"cniVersion": "1.0.0", "name": "ptpnet", "plugins": [
    {"type": "ptp", "mtu": 1400,
     "ipam": {"type": "host-local", "subnet": "10.1.1.0/24", "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": True}}]}

# bridge's own example in the plugin documentation
DOCS_BRIDGE = {"cniVersion": "1.0.0", "name": "mynet", "type": "bridge", "bridge": "mynet0",
               "isDefaultGateway": True, "forceAddress": False, "ipMasq": True, "hairpinMode": True,
               "ipam": {"type": "host-local", "subnet": "10.10.0.0/16"}}


def cni0_conflist(data_dir):
    """The machine's usual names: cni0 and 10.88.0.0/16 (containerd's and
    podman's default), with a dataDir the test can watch."""
    return {"cniVersion": "1.0.0", "name": "containerd-net", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "promiscMode": True,
         "ipam": {"type": "host-local", "dataDir": data_dir,
                  "ranges": [[{"subnet": "10.88.0.0/16", "rangeStart": "10.88.0.10", "rangeEnd": "10.88.0.250",
                               "gateway": "10.88.0.1"}]],
                  "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.50.0/24", "gw": "10.88.0.1"}]}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}


# the reference bridge (and ptp) learn the container's addresses from inside
# its netns on DEL: without it they leave the masquerade rules and host veth
REFERENCE_IPMASQ_LEAKS = {"cleanup.missing-netns": "CNI-", "del.no-netns": "host link veth"}


def run_cli(capsys, config, *bin_dirs):
    args = ["--config", str(config), "-q", "--json"]
    for label, bin_dir in bin_dirs:
        args += ["--bin-dir", bin_dir, "--label", label]
    rc = cli_main(args)
    reports = {r["label"]: r for r in json.loads(capsys.readouterr().out)}
    return rc, reports


def checks_of(report):
    return {c["id"]: c for c in report["checks"]}


def failures(report):
    return {c["id"]: c["evidence"] for c in report["checks"] if c["result"] == "fail"}


def derived_of(report):
    return {d["where"]: (d["from"], d["to"]) for d in report["derived"]}


def ours_and_reference(capsys, config, our_bin):
    """Run ``config`` on ours and on the reference, side by side: ours pass
    every applicable check; the reference passes all but its known leaks."""
    rc, reports = run_cli(capsys, config, ("pycni", our_bin), ("reference", REFERENCE_BIN))
    assert rc == 1
    ours, reference = reports["pycni"], reports["reference"]
    assert not failures(ours), failures(ours)
    assert ours["versions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
    assert not ours["forcedCleanup"], ours["forcedCleanup"]
    fails = failures(reference)
    assert set(fails) == set(REFERENCE_IPMASQ_LEAKS), fails
    for cid, evidence in REFERENCE_IPMASQ_LEAKS.items():
        assert evidence in fails[cid], fails[cid]
    return reports


def needs_reference():
    if not os.path.exists(os.path.join(REFERENCE_BIN, "bridge")):
        pytest.skip("reference plugins not installed")


@pytest.fixture
def podman_conflist(tmp_path):
    """A conflist written by `podman network create` (CNI backend), as a
    user finds it in /etc/cni/net.d: bridge, host-local, portmap, firewall, tuning."""
    if not shutil.which("podman"):
        pytest.skip("podman not installed")
    conf = tmp_path / "containers.conf"
    conf.write_text(f'[network]\nnetwork_backend = "cni"\nnetwork_config_dir = "{tmp_path / "net"}"\n')
    (tmp_path / "net").mkdir()
    name = f"podnet{uuid.uuid4().hex[:6]}"
    storage = tempfile.mkdtemp(prefix="cfpod", dir="/tmp")  # podman wants a runroot under 50 characters
    try:
        subprocess.run(["podman", "--root", f"{storage}/root", "--runroot", f"{storage}/run",
                        "network", "create", "--disable-dns", name], check=True, capture_output=True,
                       env={**os.environ, "CONTAINERS_CONF": str(conf)})
    finally:
        shutil.rmtree(storage)
    path = tmp_path / "net" / f"{name}.conflist"
    assert [p["type"] for p in json.loads(path.read_text())["plugins"]][:2] == ["bridge", "portmap"]
    return path


def _link(name):
    out = subprocess.run(["ip", "-j", "addr", "show", "dev", name], capture_output=True, text=True)
    return json.loads(out.stdout)[0] if out.returncode == 0 else None


def _root_mentions(prefix):
    addrs = subprocess.run(["ip", "addr"], capture_output=True, text=True).stdout
    route = subprocess.run(["ip", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    fw = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    return [line for line in (addrs + route + fw).splitlines() if prefix in line]


@root
def test_podman_conflist_ours_and_reference(our_bin, podman_conflist, capsys):
    needs_reference()
    written = json.loads(podman_conflist.read_text())
    bridge = written["plugins"][0]["bridge"]
    before = _link(bridge)
    default_data = f"/var/lib/cni/networks/{written['name']}"
    reports = ours_and_reference(capsys, podman_conflist, our_bin)
    # the reference firewall and tuning claim 0.4.0 on
    assert reports["reference"]["versions"] == ["0.4.0", "1.0.0"]
    for r in reports.values():
        c = derived_of(r)
        assert c["name"][0] == written["name"] and c["plugins[0].bridge"][0] == bridge
        assert c["plugins[0].ipam.dataDir"][0] == "(default /var/lib/cni/networks)"
        assert c["plugins[3].dataDir"][0] == "(default /run/cni/tuning)"
        assert c["plugins[0].ipam.ranges[0][0].subnet"][0] == written["plugins"][0]["ipam"]["ranges"][0][0]["subnet"]
        assert c["cniVersion"][0] == "0.4.0"
    assert checks_of(reports["pycni"])["gc"]["result"] == "pass"
    assert json.loads(podman_conflist.read_text()) == written
    assert _link(bridge) == before and not os.path.exists(default_data)


@pytest.fixture
def host_netns():
    """A network namespace standing for a host whose firewall is empty."""
    name = f"cfhost{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@root
def test_a_run_leaves_an_empty_firewall_empty(our_bin, podman_conflist, host_netns):
    """The reference bridge, portmap and firewall create global chains and
    iptables-nft tables that outlive their last container; the suite removes
    what its run created, so the host's firewall is as before."""
    needs_reference()
    out = subprocess.run(["ip", "netns", "exec", host_netns, sys.executable, "-m", "conformance",
                          "--bin-dir", our_bin, "--bin-dir", REFERENCE_BIN, "--config", str(podman_conflist),
                          "-q", "--json"], capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    ours, reference = json.loads(out.stdout)
    assert not ours["forcedCleanup"]
    assert any("CNI-FORWARD" in item for item in reference["forcedCleanup"])
    ruleset = subprocess.run(["ip", "netns", "exec", host_netns, "nft", "list", "ruleset"],
                             capture_output=True, text=True, check=True).stdout
    assert ruleset.strip() == "", ruleset


@root
def test_docs_bridge_conf_ours_and_reference(our_bin, tmp_path, capsys):
    needs_reference()
    path = tmp_path / "10-mynet.conf"
    path.write_text(json.dumps(DOCS_BRIDGE, indent=4))
    reports = ours_and_reference(capsys, path, our_bin)
    for r in reports.values():
        c = derived_of(r)
        assert c["bridge"][0] == "mynet0" and c["ipam.subnet"][0] == "10.10.0.0/16"
        assert re.fullmatch(r"10\.2\d\d\.\d+\.0/24", c["ipam.subnet"][1])
    assert _link("mynet0") is None
    # the text output says what it changed before the table
    assert cli_main(["--bin-dir", our_bin, "--config", str(path), "-q", "--versions", "1.0.0"]) == 0
    text = capsys.readouterr().out
    assert text.index("ipam.subnet: 10.10.0.0/16 -> 10.2") < text.index("CNI conformance: ")
    assert "bridge: mynet0 -> cf" in text and "ipam.dataDir: (default /var/lib/cni/networks) -> " in text


@root
def test_cni0_and_10_88_of_the_machine_stay_untouched(our_bin, tmp_path, capsys):
    needs_reference()
    data_dir = tmp_path / "machine-data"
    data_dir.mkdir()
    path = tmp_path / "10-containerd-net.conflist"
    path.write_text(json.dumps(cni0_conflist(str(data_dir))))
    cni0_before, mentions_before = _link("cni0"), _root_mentions("10.88.")
    reports = ours_and_reference(capsys, path, our_bin)
    for r in reports.values():
        c = derived_of(r)
        assert c["plugins[0].bridge"][0] == "cni0" and c["plugins[0].bridge"][1].startswith("cf")
        assert c["plugins[0].ipam.dataDir"] == (str(data_dir), c["plugins[0].ipam.dataDir"][1])
        new = ipaddress.ip_network(c["plugins[0].ipam.ranges[0][0].subnet"][1])
        assert c["plugins[0].ipam.ranges[0][0].subnet"][0] == "10.88.0.0/16"
        assert new.prefixlen == 24 and str(new).startswith("10.2")
        for key, offset in (("rangeStart", 10), ("rangeEnd", 250), ("gateway", 1)):
            assert c[f"plugins[0].ipam.ranges[0][0].{key}"][1] == str(new.network_address + offset)
        assert c["plugins[0].ipam.routes[1].gw"][1] == str(new.network_address + 1)
    # no cni0 appeared (nor changed, if the machine has one), nothing written
    # in the config's dataDir, no address, route or rule for 10.88 on the host
    if cni0_before is None:
        assert _link("cni0") is None
    else:
        assert _link("cni0") == cni0_before
    assert list(data_dir.iterdir()) == []
    assert _root_mentions("10.88.") == mentions_before


@root
def test_ptp_gets_the_generic_checks(tmp_path, capsys):
    """ptp: a type the suite knows nothing special of."""
    needs_reference()
    path = tmp_path / "ptp.conflist"
    path.write_text(json.dumps(PTP))
    rc, reports = run_cli(capsys, path, ("reference", REFERENCE_BIN))
    r = reports["reference"]
    checks = checks_of(r)
    # ADD/CHECK/DEL, shapes and versions, errors, idempotence, missing netns, leaks: all judged
    for v in r["versions"]:
        for cid in ("add", "result.schema", "result.version", "result.present", "del", "del.idempotent", "cleanup"):
            assert checks[f"{cid}@{v}"]["result"] == "pass", checks[f"{cid}@{v}"]
    for cid in ("version.output", "del.missing-netns", "cleanup.missing-netns", "del.never-added",
                "errors.decode", "errors.version", "errors.env", "chain.prevresult"):
        assert checks[cid]["result"] == "pass", checks[cid]
    # what the suite cannot judge for an unknown type is n/a, with the reason
    assert checks["concurrency"]["result"] == "n/a"
    assert "ptp: a type the suite has no special knowledge of" in checks["concurrency"]["evidence"]
    assert any("type 'ptp' is one the suite has no special knowledge of" in n for n in r["notes"])
    # ptp's DEL without CNI_NETNS leaves the host end of its veth
    assert rc == 1 and set(failures(r)) == {"del.no-netns"}
    assert "host link veth" in failures(r)["del.no-netns"]


@root
def test_suite_config_says_what_a_conflist_cannot(tmp_path, capsys):
    """A suite config naming the same ptp conflist: its concurrency runs the
    parallel check the suite cannot judge on its own for ptp."""
    needs_reference()
    (tmp_path / "ptp.conflist").write_text(json.dumps(PTP))
    suite = tmp_path / "ptp-suite.yaml"
    suite.write_text("network: ptp.conflist\nifname: net0\nconcurrency: 3\nversions: [1.0.0]\n")
    rc, reports = run_cli(capsys, suite, ("reference", REFERENCE_BIN))
    checks = checks_of(reports["reference"])
    assert checks["concurrency"]["result"] == "pass", checks["concurrency"]
    assert checks["concurrency"]["evidence"].startswith("3 parallel ADDs/DELs")
    assert checks["result.present@1.0.0"]["result"] == "pass"
    assert derived_of(reports["reference"])["plugins[0].ipam.subnet"][0] == "10.1.1.0/24"
    assert rc == 1 and set(failures(reports["reference"])) == {"del.no-netns"}


@pytest.fixture
def host_device():
    """A device standing for the host's NIC: one end of a veth pair."""
    name = f"cfm{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", name + "p"], check=True)
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    yield name
    subprocess.run(["ip", "link", "delete", name], capture_output=True)


@root
def test_macvlan_keeps_the_hosts_master(host_device, tmp_path, capsys):
    needs_reference()
    path = tmp_path / "macvlan.conflist"
    path.write_text(json.dumps({"cniVersion": "1.0.0", "name": "macnet", "plugins": [
        {"type": "macvlan", "master": host_device, "mode": "bridge",
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "192.168.77.0/24", "rangeStart": "192.168.77.100",
                                                     "rangeEnd": "192.168.77.200", "gateway": "192.168.77.1"}]]}}]}))
    before = _link(host_device)
    rc, reports = run_cli(capsys, path, ("reference", REFERENCE_BIN))
    r = reports["reference"]
    assert rc == 0 and not failures(r), failures(r)
    assert checks_of(r)["concurrency"]["result"] == "n/a"
    assert "plugins[0].master" not in derived_of(r)
    assert any(f"master '{host_device}' kept" in n for n in r["notes"])
    assert derived_of(r)["plugins[0].ipam.ranges[0][0].rangeStart"][0] == "192.168.77.100"
    links = json.loads(subprocess.run(["ip", "-j", "-d", "link"], capture_output=True, text=True).stdout)
    assert not [l["ifname"] for l in links if l.get("link") == host_device and l.get("ifname") != host_device + "p"]
    assert _link(host_device) == before


@root
def test_nothing_left_behind():
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not re.search(r"^cf[0-9a-f]{8}n\d+", netns, re.M), netns
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)
    assert not [l["ifname"] for l in links if re.fullmatch(r"cf[0-9a-f]{8}", l["ifname"])]
    assert not [l["ifname"] for l in links if re.fullmatch(r"cf[0-9a-f]{8}(b\d+)?|cfm[0-9a-f]{8}p?", l["ifname"])]
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert not re.search(r"cf-[\w.-]+-[0-9a-f]{8}", ruleset)
