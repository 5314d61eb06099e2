"""The one table of plugin types: type name -> module implementing it.

Used by the installer (one executable per entry), the node agent (which
modules it serves), in-process IPAM delegation and the executables' own
fallback when the agent is gone.  Names, not imports: nothing is loaded
until a plugin of that type is run.
"""
PLUGINS = {
    "bridge": "cni_plugins.bridge",
    "loopback": "cni_plugins.loopback",
    "host-local": "ipam.host_local",
    "portmap": "cni_plugins.portmap",
    "firewall": "cni_plugins.firewall",
    "tuning": "cni_plugins.tuning",
    "bandwidth": "cni_plugins.bandwidth",
    "dnsname": "cni_plugins.dnsname.plugin",
    "overlay": "cni_plugins.overlay",
    "netpolicy": "cni_plugins.netpolicy",
}
# The types an ``ipam.type`` may name among ours: the others are interface
# or chained plugins, and delegating to one (our bridge as its own IPAM)
# would recurse.
IPAM = ("host-local",)


def load(plugin_type: str):
    """The module of a registered plugin type (KeyError for others)."""
    import importlib

    return importlib.import_module(PLUGINS[plugin_type])
