"""Labs: hosts and pods built from real network namespaces, wired up by the
CNI plugins driven through the CNI protocol (libcni.py); hosts of an
overlay network each run a node agent.

A lab file (YAML)::

    name: demo                    # [a-z0-9-], at most 20 characters
    cniVersion: 1.0.0             # optional, for the generated conflists
    cniPath: /usr/lib/cni         # optional; default: pycni's plugins, installed
                                  #   into the lab dir (`--cni-path` overrides both)
    loopback: true                # optional; run the `loopback` plugin (ifname lo) per pod
    hosts:
      - name: node1               # netns "pycni-<lab>-<host>", standing for a node
        underlay: 10.250.0.1/24   # optional: eth0 in the host, on a lab bridge in the root netns
    networks:
      - name: podnet
        subnet: 10.244.1.0/24     # and/or subnet6: fd00:244:1::/64
        # optional: type (bridge), bridge (default "pb-<network>"), isGateway (true),
        # ipMasq (false), mtu, hairpinMode, cniVersion,
        # or plugins: [...] a full CNI plugin list (host-local gets a per-host dataDir)
        # dns: true appends the dnsname plugin (domain: its domainName, default
        #   dns.podman): pods resolve each other by name through the resolver on
        #   the gateway; each pod gets /etc/netns/<pod netns>/resolv.conf from
        #   the result's dns, which `ip netns exec` (so `lab exec`) mounts
      - name: cluster             # at most one overlay network; every host needs an underlay
        type: overlay
        clusterCIDR: 10.244.0.0/16     # and/or clusterCIDR6: fd00:10:244::/48
        # optional: subnetPrefixLength(6), vni, port, mtu (VXLAN), directRouting,
        # leaseTTL (the agents' settings, overlay/config.py); bridge, ipMasq
        # (default true: traffic leaving the cluster CIDR), hairpinMode, dns, domain;
        # store: file (default, under the lab dir) or etcd: with etcdEndpoints an
        #   etcd of yours, else the lab runs etcdMembers (1, 3 or 5) itself in
        #   netns "pycni-<lab>-_etcd" at etcdAddress (default: the last address
        #   of the first host's underlay subnet), ports 2379/2380, 2381/2382...
    pods:
      - {name: a, host: node1, network: podnet}          # namespace: default
      - {name: b, namespace: web, host: node1, network: podnet, ifname: eth0}
      - name: c                                          # labels and named ports: for network policy
        namespace: web
        host: node1
        network: podnet
        labels: {app: api}
        ports: [{name: http, port: 8080, protocol: TCP}]   # protocol TCP (default), UDP or SCTP
    namespaces:                   # network policy: Namespace objects with their labels
      - {name: web, labels: {team: blue}}
    policies:                     # network policy: NetworkPolicy objects as Kubernetes has them,
      - policies/deny.yaml        #   or paths (relative to this file) of YAML/JSON files of them
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: api-from-blue, namespace: web}
        spec: {podSelector: {matchLabels: {app: api}}, ingress: [{from: [{namespaceSelector: {}}]}]}

Every host keeps its own CNI state under ``/run/pycni/lab/<lab>/hosts/<host>``
(conflists, libcni cache, host-local dataDir, PYCNI_STATE_DIR and
PYCNI_RUN_DIR), and the plugins run inside the host's netns, so a pod's
bridge lives in its host.  Pod netns: ``pycni-<lab>-<namespace>.<pod>``.
On an overlay lab each host runs `pycni agent` with the overlay duty in its
netns (``<host dir>/agent/``: settings, status, log, pid file), and pods are
attached once it holds a lease.

Network policy is on when the file has ``policies`` or ``namespaces``
(either may be empty; it cannot be turned on or off in a running lab).
Then every host's agent runs the policy duty, the generated conflists end
in the netpolicy plugin, pods' labels and ports reach it as runtimeConfig
capabilities, and the objects are enforced by every host: through
``<lab dir>/netpolicy/`` on one host, through the overlay's store across
hosts (policy.py).  ``pycni lab probe 80/tcp 53/udp`` prints who reaches
whom (probe.py).  The lab's state is ``state.json`` in the
lab dir; ``down`` works from it (or from the file, or from the netns names
alone) even after a failed ``up``; ``apply`` brings a running lab to a
changed file (reconcile.py).

Modules: spec (file -> plan, pure), state (state.json), hosts (namespaces
and the switch), cni (conflists, pods), agents and etcd (the processes),
processes (pid files), policy (network policy's objects, pods and their
enforcement), reconcile (up, apply, down), status, probe, cli.
Unknown keys are errors: spec.SCHEMA is where later features add theirs.
"""
from .cli import run_cli
from .reconcile import apply, down, up
from .spec import DEFAULT_LAB_ROOT, LAB_ROOT_ENV, LabError, _hash, lab_root, load_file, parse
from .status import format_status, status_json

__all__ = ["DEFAULT_LAB_ROOT", "LAB_ROOT_ENV", "LabError", "_hash", "apply", "down", "format_status", "lab_root",
           "load_file", "parse", "run_cli", "status_json", "up"]
