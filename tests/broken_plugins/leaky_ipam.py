"""bridge whose DEL forgets to release the IPAM reservation.
Caught by: cleanup (the host-local file for the address stays)."""
from cni_plugins import bridge
from cni_plugins.core import delegate as ipam
from _base import run

_run = ipam.run


def run_ipam(req, command):
    if command == "DEL":
        return None
    return _run(req, command)


ipam.run = run_ipam
run(bridge)
