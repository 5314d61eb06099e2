"""bridge that reports one more address than it configured.
Caught by: result.present."""
import ipaddress
import types

from cni_plugins import bridge
from _base import run


def add(req):
    result = bridge.add(req)
    first = ipaddress.ip_interface(result["ips"][0]["address"])
    phantom = ipaddress.ip_interface(f"{first.network.network_address + 249}/{first.network.prefixlen}")
    result["ips"].append({"address": str(phantom), "interface": 2})
    return result


plugin = types.SimpleNamespace(add=add, check=bridge.check, delete=bridge.delete,
                               gc=bridge.gc, status=bridge.status)
run(plugin)
