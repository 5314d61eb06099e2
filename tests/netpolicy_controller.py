"""Run the network-policy controller service in the current network
namespace as the node agent runs it (netpolicy.service.PolicyService), for
the tests and the benchmark:

    netpolicy_controller.py --node NAME --state-dir DIR [--policy-dir DIR ...] [--socket NAME]
                            [--store file:PATH | --store etcd:URL[,URL...]]

prints "ready" once it serves (after its first reconcile) and stops on
SIGTERM or when stdin closes; our tables stay, as they do when the agent
stops.
"""
import argparse
import logging
import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from netpolicy.service import PolicyService  # noqa: E402
from netpolicy.store import open_store  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--policy-dir", action="append", default=[])
    parser.add_argument("--socket", default="pycni-policy")
    parser.add_argument("--store", help="file:PATH or etcd:URL[,URL...] (the overlay's store)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    store = None
    if args.store:
        kind, _, where = args.store.partition(":")
        store = open_store(kind, path=where, endpoints=where.split(","))
    service = PolicyService.for_node(args.node, args.state_dir, args.policy_dir, args.socket, store)
    service.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    stop.wait()
    service.stop()


if __name__ == "__main__":
    main()
