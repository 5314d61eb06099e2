"""Reading a plugin's config into typed values: every error is code 7 and
names the plugin and the key."""
from .errors import INVALID_CONFIG, CNIError

_UNSET = object()


def bad_config(plugin: str, msg: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"{plugin}: {msg}")


def typed(plugin: str, conf: dict, key: str, kind, default=_UNSET):
    """conf[key] checked to be a ``kind`` (a bool is not an int); absent or
    null gives ``default``."""
    value = conf.get(key, default)
    if value is _UNSET or value is None:
        return default
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise bad_config(plugin, f"{key!r} must be {kind.__name__}, got {value!r}")
    return value


def unicast_mac(plugin: str, mac: str) -> str:
    """A MAC address as six colon-separated octets, lower case; refused
    unless it is a unicast address."""
    try:
        octets = bytes(int(part, 16) for part in mac.split(":"))
    except (ValueError, AttributeError):
        octets = b""
    if len(octets) != 6 or octets[0] & 1:
        raise bad_config(plugin, f"invalid unicast MAC {mac!r}")
    return ":".join(f"{b:02x}" for b in octets)


def fold_keys(obj: dict, names: tuple[str, ...]) -> dict:
    """``obj`` with keys that match one of ``names`` case-insensitively
    also present under that name (an exact match wins).  Go plugins read
    JSON with encoding/json, which matches field names that way, and
    runtimes rely on it: containerd sends port mappings as go-cni's untagged
    struct, {"HostPort": ..., "ContainerPort": ...}."""
    out = dict(obj)
    wanted = {n.lower(): n for n in names}
    for key, value in obj.items():
        name = wanted.get(key.lower()) if isinstance(key, str) else None
        if name is not None and name not in obj:
            out[name] = value
    return out
