"""The spec's rules for the identifiers a runtime hands a plugin, in one
place for both sides: plugins refuse a bad request with them (core.request)
and the runtime side (pycni.libcni) refuses to send one.  Each check
returns what is wrong, or None."""
import re

# CNI spec: container ID "must have only alphanumeric characters, _, . or -"
# and start with an alphanumeric (the same rule libcni applies to network names).
IDENTIFIER = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
IFNAME_MAX = 15  # IFNAMSIZ - 1


def container_id_problem(container_id: str) -> str | None:
    if not container_id or not IDENTIFIER.match(container_id):
        return f"invalid characters in containerID {container_id!r}"
    return None


def ifname_problem(name: str) -> str | None:
    """The kernel's rules for an interface name (dev_valid_name): at most
    15 bytes, not "." or "..", no '/', ':' or white space; and valid UTF-8
    (a name from the environment that was not decodes with surrogates)."""
    try:
        raw = name.encode()
    except UnicodeEncodeError:
        return f"invalid interface name {name!r}: not valid UTF-8"
    if not raw or len(raw) > IFNAME_MAX or name in (".", "..") or any(c in name for c in "/:") \
            or any(c.isspace() for c in name):
        return f"invalid interface name {name!r}"
    return None


def network_name_problem(name: str) -> str | None:
    if not name or not IDENTIFIER.match(name):
        return f"invalid characters in network name {name!r}"
    return None


def parse_cni_args(raw: str) -> list[tuple[str, str]]:
    """``"A=b;C=d"`` -> ``[("A", "b"), ("C", "d")]``; ValueError naming a
    pair without '=' or without a key."""
    pairs = []
    for part in filter(None, (raw or "").split(";")):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"invalid CNI_ARGS pair {part!r}")
        pairs.append((key, value))
    return pairs
