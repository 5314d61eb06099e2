"""The overlay across hosts: each host a network namespace on a shared
switch running `python -m overlay`, each pod a namespace behind a bridge on
its host.  What is asserted is what a user sees: pings and TCP that cross,
entries that appear and go, packets that are dropped."""
import itertools
import random
import re
import signal
import subprocess
import time

import pytest

from conftest import run
from overlay_env import (PYTHON, ECHO_SERVER, SEND_VXLAN, UDP_SINK, EtcdCluster, Lab, PodStream, bridge_fdb, ip_show,
                         netns_exec, ping, start_python, tcp_echo_once, wait_for)

DEVICE = "pycni.42"


def make_settings(tmp_path, store, etcd=None):
    settings = {"clusterCIDR": "10.232.0.0/16", "clusterCIDR6": "fd00:232::/48", "vni": 42,
                "leaseTTL": 6, "store": store}
    if store == "file":
        settings["storePath"] = str(tmp_path / "leases")
    else:
        settings["etcdEndpoints"] = etcd.endpoints
    return settings


@pytest.fixture(params=["file", "etcd"])
def lab(request, tmp_path):
    """Three running hosts with a pod each, on the file store or on a
    one-member etcd that runs in its own namespace on the switch."""
    prefix = f"10.{random.randint(230, 239)}.{random.randint(0, 255)}"
    lab = Lab(tmp_path, {}, prefix)
    etcd = None
    try:
        if request.param == "etcd":
            store_ns = lab.switch.plug("ovetcd", f"{prefix}.250")
            etcd = EtcdCluster(tmp_path, netns=store_ns, host=f"{prefix}.250")
        lab.settings = make_settings(tmp_path, request.param, etcd)
        lab.etcd = etcd
        for n in (1, 2, 3):
            lab.add_host(n).start(wait=False)
        for host in lab.hosts:
            host.wait_ready()
            host.add_pod()
        yield lab
    finally:
        lab.destroy()
        if etcd:
            etcd.stop()


def converged(lab, version=4):
    """Every pod reaches every other pod."""
    return all(ping(a.pod, b.pod_address(version)) for a, b in itertools.permutations(lab.hosts, 2))


def peer_entries(host, state):
    """What `host` has for the node whose state file says `state`: routes
    to its subnets, its VTEP neighbour entries and FDB entries."""
    routes = ip_show(host.ns, "route", "show", "proto", "112") + ip_show(host.ns, "-6", "route", "show", "proto", "112")
    neigh = ip_show(host.ns, "neigh", "show", "dev", DEVICE)  # both families
    fdb = bridge_fdb(host.ns, DEVICE)
    found = []
    for subnet in (state["subnet"], state["subnet6"]):
        found += [line for line in routes.splitlines() if line.startswith(subnet + " ")]
    found += [line for line in neigh.splitlines() if state["vtep"]["mac"] in line]
    found += [line for line in fdb.splitlines() if state["vtep"]["mac"] in line]
    return found


def test_pods_reach_each_other_across_hosts(lab):
    wait_for(lambda: converged(lab), what="IPv4 convergence")
    wait_for(lambda: converged(lab, 6), what="IPv6 convergence")
    a, b, c = lab.hosts
    server = start_python(b.pod, ECHO_SERVER, b.pod_address(), 7000, log=lab.tmp / "echo.log")
    try:
        wait_for(lambda: "listening" in (lab.tmp / "echo.log").read_text(), what="echo server")
        assert tcp_echo_once(a.pod, b.pod_address(), 7000)
        assert tcp_echo_once(c.pod, b.pod_address(), 7000)
    finally:
        server.kill()
        server.wait()
    for host in lab.hosts:
        state = host.state()
        assert state["mtu"] == 1450 and state["subnet"].endswith("/24") and state["subnet6"].endswith("/64")
        link = ip_show(host.ns, "-d", "link", "show", DEVICE)
        assert "mtu 1450" in link and "vxlan id 42" in link and "dstport 4789" in link and "nolearning" in link
        assert f"local {host.address}" in link
        others = {h.address for h in lab.hosts if h is not host}
        elements = run(*netns_exec(host.ns, "nft", "list", "set", "inet", "pycni_overlay", "peers4")).stdout
        assert set(re.findall(r"\d+\.\d+\.\d+\.\d+", elements)) == others
    # 1,400-byte IP packets with DF set cross (1372 + 8 ICMP + 20 IP)
    assert ping(a.pod, c.pod_address(), size=1372, df=True)
    assert not ping(a.pod, c.pod_address(), size=1422 + 1, df=True)  # over the pod MTU: refused


def test_a_leaving_host_disappears_and_returns_at_a_new_address(lab):
    wait_for(lambda: converged(lab), what="convergence")
    a, b, c = lab.hosts
    old = c.state()
    assert len(peer_entries(a, old)) == len(peer_entries(b, old)) == 2 + 2 + 1
    assert c.controller.stop() == 0
    for host in (a, b):
        wait_for(lambda: not peer_entries(host, old), what=f"{c.name}'s entries to leave {host.name}")
    # what the leaving host made is gone from it too
    assert DEVICE not in ip_show(c.ns, "link")
    assert not ip_show(c.ns, "route", "show", "proto", "112").strip()
    assert "pycni_overlay" not in run(*netns_exec(c.ns, "nft", "list", "tables")).stdout
    assert not c.state_file.exists()
    pids = [h.controller.proc.pid for h in (a, b)]
    c.move(f"{lab.prefix}.33")
    c.start()
    assert c.state()["subnet"] == old["subnet"]  # its subnet was kept for it
    wait_for(lambda: converged(lab), what="convergence with the returned host")
    assert f"dst {lab.prefix}.33" in bridge_fdb(a.ns, DEVICE)
    assert f"dst {lab.prefix}.3 " not in bridge_fdb(a.ns, DEVICE) + " "
    assert [h.controller.proc.pid for h in (a, b)] == pids and all(h.controller.proc.poll() is None for h in (a, b))


def test_a_running_host_whose_underlay_address_changes_is_followed(lab):
    wait_for(lambda: converged(lab), what="convergence")
    a, b, c = lab.hosts
    b.move(f"{lab.prefix}.44")
    wait_for(lambda: f"dst {lab.prefix}.44" in bridge_fdb(a.ns, DEVICE)
             and f"dst {lab.prefix}.44" in bridge_fdb(c.ns, DEVICE), what="the new address to reach the peers")
    wait_for(lambda: converged(lab), what="convergence after the move")
    for host in (a, c):
        assert f"dst {lab.prefix}.2 " not in bridge_fdb(host.ns, DEVICE)  # no stale entry
    assert f"local {lab.prefix}.44" in ip_show(b.ns, "-d", "link", "show", DEVICE)
    assert b.state()["underlay"]["address"] == f"{lab.prefix}.44"
    assert all(h.controller.proc.poll() is None for h in lab.hosts)


@pytest.mark.parametrize("lab", ["file"], indirect=True)
def test_vxlan_from_an_unknown_underlay_address_is_dropped(lab):
    wait_for(lambda: converged(lab), what="convergence")
    a, b, _ = lab.hosts
    intruder = lab.switch.plug("ovevil", f"{lab.prefix}.66")
    sink_log = lab.tmp / "sink.log"
    sink = start_python(a.pod, UDP_SINK, a.pod_address(), log=sink_log)
    try:
        wait_for(lambda: "listening" in sink_log.read_text(), what="the UDP sink")
        mac = a.state()["vtep"]["mac"]
        dropped_before = dropped(a)

        def craft(ns, src, payload):
            subprocess.run(netns_exec(ns, PYTHON, "-c", SEND_VXLAN, src, a.address, b.pod_address(),
                                      a.pod_address(), mac, payload, "42"), check=True, capture_output=True)

        craft(intruder, f"{lab.prefix}.66", "from-the-intruder")
        wait_for(lambda: dropped(a) > dropped_before, what="the guard's drop counter")
        # the same packet from a known node's address goes through: the craft is sound
        craft(b.ns, b.address, "from-a-known-node")
        wait_for(lambda: "from-a-known-node" in sink_log.read_text(), what="the control packet")
        assert "from-the-intruder" not in sink_log.read_text()
    finally:
        sink.kill()
        sink.wait()


def dropped(host):
    out = run(*netns_exec(host.ns, "nft", "list", "counter", "inet", "pycni_overlay", "dropped")).stdout
    return int(re.search(r"packets (\d+)", out).group(1))


@pytest.mark.parametrize("lab", ["etcd"], indirect=True)
def test_a_pod_tcp_stream_survives_controller_and_etcd_restarts_and_an_outage(lab):
    wait_for(lambda: converged(lab), what="convergence")
    a, b, _ = lab.hosts
    stream = PodStream(lab.tmp, a.pod, b.pod, b.pod_address(), 7002)
    flowing = stream.flowing
    try:
        flowing()
        # a controller crash and restart: kernel state stays, the new one adopts it
        a.controller.stop(signal.SIGKILL)
        flowing()
        a.start(extra_args=("--keep-on-exit",))
        flowing()
        # an etcd restart
        lab.etcd.kill(0)
        flowing()
        lab.etcd.start(0)
        flowing()
        # an outage longer than the lease TTL: the dataplane stays, leases are renewed afterwards
        lab.etcd.kill(0)
        wait_for(lambda: "no etcd endpoint answered" in a.controller.log_text(), timeout=30,
                 what="a failed renewal")
        time.sleep(lab.settings["leaseTTL"] + 1)  # let the outage outlast the TTL
        flowing()
        lab.etcd.start(0)
        wait_for(lambda: renewed_since_outage(a), timeout=30, what="a renewal after the outage")
        flowing()
        assert converged(lab)
        # a clean stop that keeps lease and dataplane (an upgrade) does not interrupt either
        assert a.controller.stop() == 0
        assert DEVICE in ip_show(a.ns, "link") and a.state_file.exists()
        flowing()
    finally:
        stream.stop()


def renewed_since_outage(host):
    log = host.controller.log_text()
    failed = log.rfind("no etcd endpoint answered")
    return failed >= 0 and "renewed" in log[failed:]


@pytest.mark.parametrize("lab", ["file"], indirect=True)
def test_direct_routing_skips_encapsulation_on_a_shared_underlay_subnet(lab):
    for host in lab.hosts:  # the same lab, restarted with directRouting
        host.controller.stop()
        host.start(directRouting=True)
    wait_for(lambda: converged(lab), what="convergence with direct routes")
    a, b, c = lab.hosts
    routes = ip_show(a.ns, "route", "show", "proto", "112")
    assert f"{b.state()['subnet']} via {b.address} dev eth0" in routes
    assert f"{c.state()['subnet']} via {c.address} dev eth0" in routes
    # IPv6 pod subnets cannot use an IPv4 next hop: they stay on VXLAN
    assert f"via {b.state()['vtep']['address6']} dev {DEVICE}" in ip_show(a.ns, "-6", "route", "show", "proto", "112")
    assert wait_for(lambda: converged(lab, 6), what="IPv6 over VXLAN beside direct IPv4")
