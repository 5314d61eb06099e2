"""What the suite knows about plugin types, in one table.

Two kinds of knowledge, kept apart because they change for different
reasons:

- what a type's config names on the host, so a deployed config can be made
  private to one run (``DERIVED_NAMES``, ``DATA_DIRS``) or must be kept
  because it names the machine's own device (``HOST_DEVICES``);
- which types the suite can judge beyond the generic checks
  (``SERVES_MANY``, ``ALLOCATING_IPAM``).  A type absent from them still
  gets every generic check; the others are marked n/a with the reason.
"""
from __future__ import annotations

# type -> (config key naming a host object the plugin creates, its default).
# The bridge plugins create the bridge when it is missing: a derived config
# names a fresh one so the machine's own (cni0, cni-podman0) is never touched.
DERIVED_NAMES = {"bridge": ("bridge", "cni0")}

# type -> the default of its "dataDir" key, a directory it writes state into.
DATA_DIRS = {
    "host-local": "/var/lib/cni/networks",   # IPAM reservations
    "tuning": "/run/cni/tuning",             # the reference's backup of what it changed
}

# type -> (config key naming an existing host device, what the plugin does
# with it).  Kept as written: the device is the machine's, the suite creates
# nothing on it outside its own namespaces.
HOST_DEVICES = {
    "macvlan": ("master", "links a macvlan in each test namespace to it"),
    "ipvlan": ("master", "links an ipvlan in each test namespace to it"),
    "vlan": ("master", "links a VLAN device in each test namespace to it"),
    "host-device": ("device", "MOVES it into a test namespace while an attachment lives"),
}
# with no such key these use the device of the host's default route
DEFAULT_ROUTE_DEVICE = {"macvlan", "ipvlan"}

# Types known to serve many containers on one network at once (pycni's
# plugins and the interface plugins they chain after): the concurrency check
# applies.  host-device, for one, cannot.
SERVES_MANY = {"bridge", "loopback", "portmap", "firewall", "tuning", "bandwidth", "dnsname"}

# IPAM types that allocate (distinct addresses per container) and whose
# reservations the suite can find: files named by address under dataDir.
ALLOCATING_IPAM = {"host-local"}


def known(plugin_type: str) -> bool:
    """Does the suite know enough of the type to judge every check?"""
    return plugin_type in SERVES_MANY


def unknown_types(plugins: list[dict]) -> list[str]:
    """Plugin types the suite can only give the generic checks."""
    return [p["type"] for p in plugins if not known(p["type"])]


def ipam_types(plugins: list[dict]) -> list[str]:
    """The IPAM types the plugins delegate to, each once."""
    return list(dict.fromkeys(p["ipam"]["type"] for p in plugins if isinstance(p.get("ipam"), dict)))


def allocating_ipam(plugins: list[dict]) -> bool:
    """Does every plugin with IPAM use one the suite knows to allocate?"""
    ipams = ipam_types(plugins)
    return bool(ipams) and all(t in ALLOCATING_IPAM for t in ipams)
