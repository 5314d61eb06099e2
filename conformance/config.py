"""What ``--config`` names, read into a SuiteConfig.

Two kinds of file, told apart by content whatever their extension:

- a CNI network config as deployed in /etc/cni/net.d: a ``.conf`` (an
  object with ``type``) or a ``.conflist`` (with ``plugins``).  The suite
  derives a private copy per run (derive.py) and runs it as written
  otherwise;
- the suite's own config (YAML or JSON, with ``network``), for what a
  network config cannot say: env, ifname, concurrency, versions, chained.
  Its ``network`` is inline or a path to a network config; a network that
  uses the placeholders below is a template filled in per run, any other is
  derived like a deployed file.

Every problem is a ConfigError with one line naming it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import yaml

from cni_plugins.core.names import ifname_problem
from cni_plugins.core.version import SUPPORTED

from . import derive, netconf
from .netconf import ConfigError

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
PLACEHOLDERS = ("name", "bridge", "subnet", "gateway", "rangeStart", "rangeEnd", "dataDir", "stateDir",
                "runDir", "tmp")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
SUITE_KEYS = ("name", "network", "main", "versions", "env", "ifname", "chained", "concurrency")


@dataclass
class SuiteConfig:
    name: str
    network: dict                    # conflist or single plugin config
    main: str                        # plugin type under test
    versions: list[str] | None = None
    env: dict = field(default_factory=dict)
    ifname: str = "eth0"
    chained: bool = False            # main plugin is meant to run after others
    concurrency: int | None = None   # parallel containers; None: 4 where the suite knows the types
    source: str = ""
    derived: bool = False            # the network names real things: derive a private copy per run

    @property
    def plugins(self) -> list[dict]:
        return netconf.plugins_of(self.network)

    @classmethod
    def load(cls, name: str) -> "SuiteConfig":
        """From a path, or the name of a shipped suite config."""
        path = _resolve(name)
        doc = read_document(path)
        if "network" in doc:
            return _suite_config(doc, path)
        if "plugins" in doc or "type" in doc:
            return _network_config(doc, path)
        raise ConfigError(f"{path}: neither a CNI network config (no \"type\"), a conflist (no \"plugins\") "
                          "nor a suite config (no \"network\")")


def missing_plugin(cfg: SuiteConfig, bin_dir: str) -> str | None:
    """What the network execs that ``bin_dir`` lacks, as a sentence, or None."""
    for where, plugin in netconf.plugin_entries(cfg.network):
        for what, kind in ((f"{where}type", plugin["type"]),
                           (f"{where}ipam.type", (plugin.get("ipam") or {}).get("type"))):
            path = os.path.join(bin_dir, kind) if kind else None
            if path and not (os.path.isfile(path) and os.access(path, os.X_OK)):
                return f"{cfg.source}: {what} {kind!r} is not an executable in {bin_dir}"
    return None


def parse_versions(text: str) -> list[str]:
    versions = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in versions if v not in SUPPORTED]
    if unknown or not versions:
        raise ConfigError(f"versions {', '.join(unknown) or '(none)'}: the suite tests {', '.join(SUPPORTED)}")
    return versions


# --- reading ---------------------------------------------------------------------------
def _resolve(name: str) -> str:
    if os.path.exists(name):
        return name
    for candidate in (os.path.join(SHIPPED, name), os.path.join(SHIPPED, name + ".yaml")):
        if os.path.sep not in name and os.path.exists(candidate):
            return candidate
    shipped = ", ".join(sorted(f.rsplit(".", 1)[0] for f in os.listdir(SHIPPED)))
    raise ConfigError(f"{name}: no such file (nor a shipped suite config: {shipped})")


_A = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}


def read_document(path: str) -> dict:
    """The JSON or YAML object in ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except IsADirectoryError:
        raise ConfigError(f"{path}: a directory; name one config file in it") from None
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not text (neither JSON nor YAML)") from None
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    else:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"{path}: neither JSON nor YAML: {problem}{at}") from None
    if doc is None:
        raise ConfigError(f"{path}: empty")
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: not a JSON or YAML object but {_A.get(type(doc), 'a ' + type(doc).__name__)}")
    return doc


def _uses_placeholders(obj) -> bool:
    if isinstance(obj, str):
        return bool(_PLACEHOLDER.search(obj))
    if isinstance(obj, dict):
        return any(_uses_placeholders(v) for v in obj.values())
    if isinstance(obj, list):
        return any(_uses_placeholders(v) for v in obj)
    return False


def _needs_deriving(network, path: str) -> bool:
    """Is ``network`` to be derived per run (not a template)?  Raises
    ConfigError for anything a run would otherwise trip on."""
    template = _uses_placeholders(network)
    try:
        netconf.validate(network, template=template)
        if not template:
            derive.check(network)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return not template


def _network_config(doc: dict, path: str) -> SuiteConfig:
    derived = _needs_deriving(doc, path)
    return SuiteConfig(name=str(doc["name"]), network=doc, main=netconf.plugins_of(doc)[0]["type"],
                       source=path, derived=derived)


def _suite_config(doc: dict, path: str) -> SuiteConfig:
    unknown = [k for k in doc if k not in SUITE_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} in a suite config (known: {', '.join(SUITE_KEYS)})")
    network = doc["network"]
    if isinstance(network, str):  # a path to a .conf/.conflist, relative to the suite config
        inner = os.path.join(os.path.dirname(path), network)
        network = read_document(inner)
        if "network" in network:
            raise ConfigError(f"{inner}: a suite config, where {path} wants a network config")
    derived = _needs_deriving(network, path)
    plugins = netconf.plugins_of(network)
    types = [p["type"] for p in plugins]
    main = doc.get("main") or types[0]
    if main not in types:
        raise ConfigError(f"{path}: main {main!r} is not a type of the network ({', '.join(types)})")
    versions = doc.get("versions")
    if versions not in (None, "auto"):
        if not isinstance(versions, list):
            raise ConfigError(f"{path}: versions is neither \"auto\" nor a list")
        try:
            versions = parse_versions(",".join(str(v) for v in versions))
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
    env = doc.get("env") or {}
    if not isinstance(env, dict) or any(isinstance(v, (dict, list)) for v in env.values()):
        raise ConfigError(f"{path}: env is not a map of names to strings")
    ifname = doc.get("ifname", "eth0")
    if ifname_problem(str(ifname)):
        raise ConfigError(f"{path}: ifname: {ifname_problem(str(ifname))}")
    concurrency = doc.get("concurrency")
    if concurrency is not None and (not isinstance(concurrency, int) or isinstance(concurrency, bool)
                                    or concurrency < 1):
        raise ConfigError(f"{path}: concurrency is not a whole number of at least 1")
    return SuiteConfig(name=str(doc.get("name") or os.path.basename(path).rsplit(".", 1)[0]), network=network,
                       main=main, versions=versions if isinstance(versions, list) else None,
                       env={k: str(v) for k, v in env.items()}, ifname=str(ifname),
                       chained=bool(doc.get("chained", False)), concurrency=concurrency, source=path,
                       derived=derived)
