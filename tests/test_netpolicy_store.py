"""The cluster store as a policy source: every node's registrations and
the cluster's objects in the overlay's store (a directory, or real etcd),
and, with two nodes each running the controller on one file store, a pod
registered on one node shows up in the other node's peer groups."""
import json
import os
import subprocess
import sys
import threading

import pytest

from conftest import run, unique
from overlay_env import EtcdCluster, wait_for
from netpolicy.enforcer import PolicyController
from netpolicy.model import Endpoint, NamedPort
from netpolicy.parse import PolicyError
from netpolicy.sources import Attachment
from netpolicy.store import EtcdStore, FileStore, StorePublisher

HERE = os.path.dirname(os.path.abspath(__file__))
POLICY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
          "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}]}}
NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "blue"}}}


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    yield cluster
    cluster.stop()


@pytest.fixture(params=["file", "etcd"])
def store(request, tmp_path):
    if request.param == "file":
        return FileStore(str(tmp_path / "store"))
    return EtcdStore(request.getfixturevalue("etcd").endpoints, prefix=f"/test/{unique('np')}")


def test_objects_and_every_nodes_registrations(store):
    store.replace_objects([POLICY, NAMESPACE])
    web = Endpoint("x", "web", {"app": "web"}, ("10.240.0.2",), (NamedPort("http", 8080),), "node-a")
    on_b = Endpoint("x", "web", {"app": "web"}, ("10.240.1.9",), (), "node-b")   # rescheduled, old DEL pending
    store.publish("node-a", Attachment("net", "c1", "eth0"), web)
    store.publish("node-b", Attachment("net", "c7", "eth0"), on_b)
    store.publish("node-b", Attachment("net", "c8", "eth0"),
                  Endpoint("x", "client", {"app": "client"}, ("10.240.1.3",), (), "node-b"))
    inputs = store.list()
    assert [p.key for p in inputs.policies] == ["x/p"] and inputs.namespaces[0].labels == {"team": "blue"}
    found = {e.key: e for e in inputs.endpoints}
    assert found["x/web"].addresses == ("10.240.0.2", "10.240.1.9")   # both registrations, merged
    assert found["x/client"].node == "node-b"
    assert set(store.published("node-b")) == {"net/c7/eth0", "net/c8/eth0"}
    store.publish("node-b", Attachment("net", "c7", "eth0"), None)
    assert {e.key: e for e in store.list().endpoints}["x/web"].addresses == ("10.240.0.2",)
    store.replace_objects([NAMESPACE])
    assert store.list().policies == ()


def test_the_watch_reports_another_nodes_change(store):
    stop, changed = threading.Event(), threading.Event()
    if isinstance(store, FileStore):
        store.interval = 0.1   # polled; etcd's events come at once
    watcher = threading.Thread(target=store.watch, args=(changed.set, stop))
    watcher.start()
    try:
        wait_for(lambda: not changed.wait(0.3), what="the watch to settle")
        changed.clear()
        store.publish("node-z", Attachment("net", "c9", "eth0"), Endpoint("x", "new", {}, ("10.240.2.2",), (), "node-z"))
        assert changed.wait(5)
    finally:
        stop.set()
        watcher.join()


def test_an_invalid_object_in_the_store_is_refused(store):
    bad = json.loads(json.dumps(POLICY))
    bad["spec"]["podSelector"] = {"matchExpressions": [{"key": "app", "operator": "In"}]}
    store.replace_objects([bad])
    with pytest.raises(PolicyError, match="matchExpressions\\[0\\].values: must be specified"):
        store.list()


def test_a_controller_publishes_its_registrations_and_forgets_stale_ones(store, tmp_path):
    store.publish("node-a", Attachment("net", "gone", "eth0"), Endpoint("x", "gone", {}, ("10.240.0.9",), (), "node-a"))
    controller = PolicyController("node-a", registry_dir=str(tmp_path / "registry"), store=store)
    try:
        controller.registry.put(Attachment("net", "c1", "eth0"), Endpoint("x", "a", {}, ("10.240.0.2",), (), "node-a"))
        assert controller.publisher.flush()
        assert set(store.published("node-a")) == {"net/c1/eth0"}   # the stale one went at start
        controller.registry.remove(Attachment("net", "c1", "eth0"))
        assert controller.publisher.flush() and store.published("node-a") == {}
    finally:
        controller.close()


def test_publishing_is_retried_until_the_store_takes_it(tmp_path):
    class Flaky:
        def __init__(self):
            self.failures, self.written = 2, []

        def publish(self, node, attachment, endpoint):
            if self.failures:
                self.failures -= 1
                raise OSError("store unreachable")
            self.written.append(attachment.key)

    flaky = Flaky()
    publisher = StorePublisher(flaky, "node-a", retry=0.01)
    try:
        publisher(Attachment("net", "c1", "eth0"), Endpoint("x", "a"))
        assert publisher.flush(10) and flaky.written == ["net/c1/eth0"]
    finally:
        publisher.stop()


# --- two nodes, one file store: a pod of one is a peer on the other ---------------------------
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")


@needs_root
def test_a_pod_registered_on_one_node_is_a_peer_on_the_other(make_netns, tmp_path, bin_dir, state_dirs):
    from pycni import libcni

    store_path = tmp_path / "store"
    FileStore(str(store_path)).replace_objects([POLICY])
    nodes, controllers = {}, []
    try:
        for i, name in enumerate(("node-a", "node-b")):
            netns = make_netns("nps")
            socket_name = unique("pycni-policy-store-")
            proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, os.path.join(HERE, "netpolicy_controller.py"),
                                     "--node", name, "--state-dir", str(tmp_path / f"state-{name}"),
                                     "--socket", socket_name, "--store", f"file:{store_path}"],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            controllers.append(proc)
            assert proc.stdout.readline().strip() == "ready"
            conflist = {"cniVersion": "1.1.0", "name": unique("npst"), "plugins": [
                {"type": "bridge", "bridge": unique("pbr"), "isGateway": True,
                 "ipam": {"type": "host-local", "dataDir": str(tmp_path / f"ipam-{name}"),
                          "ranges": [[{"subnet": f"10.24{i}.{os.getpid() % 250}.0/24"}]]}},
                {"type": "netpolicy", "socket": socket_name, "capabilities": {"labels": True}}]}
            nodes[name] = (netns, libcni.conflist_from_bytes(json.dumps(conflist).encode()),
                           libcni.CNIConfig([bin_dir], str(tmp_path / f"cache-{name}"), exec_netns=f"/run/netns/{netns}"))

        def attach(node, namespace, name, labels):
            netns, netconf, cni = nodes[node]
            pod = make_netns("npsp")
            rt = libcni.RuntimeConf(f"c-{pod}", f"/run/netns/{pod}", "eth0", [
                ("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", name)], {"labels": labels})
            return cni.add_network_list(netconf, rt)["ips"][0]["address"].split("/")[0], rt

        server, _ = attach("node-b", "x", "server", {"app": "server"})   # isolated by POLICY on node-b
        client, client_rt = attach("node-a", "x", "client", {"app": "client"})

        def client_group_on_b():
            ruleset = run("ip", "netns", "exec", nodes["node-b"][0], "nft", "list", "table", "inet",
                          "pycni_netpolicy").stdout
            return server in ruleset and client in ruleset

        wait_for(client_group_on_b, timeout=15, what="node-b to learn node-a's client")
        netns, netconf, cni = nodes["node-a"]
        cni.del_network_list(netconf, client_rt)
        wait_for(lambda: not client_group_on_b(), timeout=15, what="node-b to forget it")
    finally:
        for proc in controllers:
            proc.stdin.close()
            proc.wait(30)
