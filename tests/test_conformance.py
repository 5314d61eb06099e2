"""The conformance suite against our plugins, the reference plugins and
deliberately broken plugins (tests/broken_plugins/)."""
import json
import os
import re
import subprocess
import sys

import pytest

from conformance.checks import FAIL, NA, PASS, run_suite
from conformance.cli import main as cli_main
from conformance.runner import SuiteConfig
from pycni.install import install, search_path

REFERENCE_BIN = "/usr/lib/cni"
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conformance", "configs")
BROKEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken_plugins")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

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


def test_nothing_left_behind():
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not re.search(r"^cf[0-9a-f]{8}n\d+", netns, re.M), netns
    links = json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True, text=True).stdout)
    assert not [l["ifname"] for l in links if re.fullmatch(r"cf[0-9a-f]{8}", l["ifname"])]
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    assert "cf-bridge-" not in ruleset
