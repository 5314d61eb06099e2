"""The shape of a CNI network configuration, as a runtime reads it from
/etc/cni/net.d: a single plugin config (a ``.conf``, with ``type``) or a
list (a ``.conflist``, with ``plugins``).  Whatever cannot be used raises
ConfigError with a one-line message naming the place and the problem."""
from __future__ import annotations

from cni_plugins.core.names import network_name_problem

# Every version the spec has published; the suite tests the ones in
# cni_plugins.core.version.SUPPORTED that the plugins claim.
SPEC_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


class ConfigError(ValueError):
    """A config the suite cannot use; str() is one line for the user."""


def is_conflist(network: dict) -> bool:
    return "plugins" in network


def plugin_entries(network: dict) -> list[tuple[str, dict]]:
    """(where, plugin) for each plugin, ``where`` being the prefix of its
    keys in messages: "plugins[1]." in a conflist, "" in a single config.
    The plugins are the network's own dicts: edits land in the network."""
    if is_conflist(network):
        return [(f"plugins[{i}].", p) for i, p in enumerate(network["plugins"])]
    return [("", network)]


def plugins_of(network: dict) -> list[dict]:
    """The plugin configs as libcni runs them (a single config without the
    network-level keys, which every exec gets anyway)."""
    if is_conflist(network):
        return network["plugins"]
    return [{k: v for k, v in network.items() if k not in ("cniVersion", "name")}]


def place(where: str) -> str:
    """A plugin's ``where`` prefix as the subject of a message."""
    return where.rstrip(".") or "the config"


def _type_problem(value) -> str | None:
    if not isinstance(value, str) or not value:
        return "has no \"type\""
    if "/" in value or value in (".", ".."):
        return f"type {value!r} is not a plugin file name"
    return None


def validate(network, *, template: bool = False) -> None:
    """Raise ConfigError for the first thing a runtime could not run.
    ``template``: the name is a placeholder filled in per run."""
    if not isinstance(network, dict):
        raise ConfigError("the network config is not an object")
    if not template:
        name = network.get("name")
        if name is None:
            raise ConfigError("the network has no \"name\"")
        problem = network_name_problem(name) if isinstance(name, str) else f"network name {name!r} is not a string"
        if problem:
            raise ConfigError(problem)
    version = network.get("cniVersion")
    if version is not None and version not in SPEC_VERSIONS:
        raise ConfigError(f"cniVersion {version!r} is not a CNI spec version ({', '.join(SPEC_VERSIONS)})")
    if is_conflist(network):
        plugins = network["plugins"]
        if not isinstance(plugins, list) or not plugins:
            raise ConfigError("\"plugins\" is not a non-empty list: a conflist needs at least one plugin")
        for i, p in enumerate(plugins):
            if not isinstance(p, dict):
                raise ConfigError(f"plugins[{i}] is not an object")
    for where, plugin in plugin_entries(network):
        problem = _type_problem(plugin.get("type"))
        if problem:
            raise ConfigError(f"{place(where)} {problem}")
        ipam = plugin.get("ipam")
        if ipam is None:
            continue
        if not isinstance(ipam, dict):
            raise ConfigError(f"{where}ipam is not an object")
        problem = _type_problem(ipam.get("type"))
        if problem:
            raise ConfigError(f"{where}ipam {problem}")
