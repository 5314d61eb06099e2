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
