"""A Python port of what Go's libcni does for a container runtime.

Loading network configurations from a directory, running a plugin chain for
ADD / CHECK / DEL / GC / STATUS through the CNI protocol (exec, environment,
stdin, stdout), and caching ADD results on disk in libcni's own format so
that DEL and CHECK get them back as ``prevResult`` and tools reading
``/var/lib/cni/results`` (cnitool, libcni itself) understand them.

Facts follow containernetworking/cni libcni/api.go and libcni/conf.go:

* configs: ``*.conf``, ``*.conflist``, ``*.json`` in sorted order, the first
  one whose ``name`` matches wins; a single-plugin config becomes a list;
* each plugin gets ``name`` and ``cniVersion`` of the list, ``prevResult``
  (previous plugin's result on ADD, the cached result on CHECK and, from
  0.4.0 on, DEL) and ``runtimeConfig`` holding only the capability args the
  plugin enables in its ``capabilities``;
* plugins get the runtime's environment plus CNI_COMMAND, CNI_CONTAINERID,
  CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH (GC and STATUS: only
  CNI_COMMAND and CNI_PATH);
* cache: ``<cacheDir>/results/<net>-<containerID>-<ifname>``,
  ``{"kind": "cniCacheV1", "containerId", "config" (base64 of the list
  bytes), "ifName", "networkName", "cniArgs", "capabilityArgs", "result"}``.
"""
from __future__ import annotations

import base64
import ctypes
import json
import os
import subprocess
from dataclasses import dataclass, field

from cni_plugins.core import execute, names, version as cniversion
from cni_plugins.core.records import write_atomic

DEFAULT_CACHE_DIR = "/var/lib/cni"
CACHE_KIND = "cniCacheV1"
CONF_EXTENSIONS = (".conf", ".conflist", ".json")
VALID_ATTACHMENTS_KEY = "cni.dev/valid-attachments"


class LibCNIError(Exception):
    """Configuration, lookup or cache trouble on the runtime side."""


class ConfigNotFound(LibCNIError):
    pass


class PluginError(LibCNIError):
    """A plugin failed; carries the spec's error fields."""

    def __init__(self, code: int, msg: str, details: str = "", *, plugin: str = "",
                 command: str = "", stderr: str = ""):
        self.code = code
        self.msg = msg
        self.details = details
        self.plugin = plugin
        self.command = command
        self.stderr = stderr
        where = f"plugin type={plugin!r} failed ({command.lower()}): " if plugin else ""
        text = f"{where}{msg}"
        if details:
            text += f"; {details}"
        super().__init__(text)

    def to_json(self, cni_version: str = "1.0.0") -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


# ---------------------------------------------------------------- configs

@dataclass
class NetworkConfigList:
    name: str
    cni_version: str
    plugins: list[dict]
    raw: bytes
    disable_check: bool = False
    disable_gc: bool = False
    source: str = ""

    @property
    def data(self) -> dict:
        return json.loads(self.raw)


def version_at_least(v: str, other: str) -> bool:
    """cni_plugins.core.version.at_least, with a config's missing version taken
    as 0.1.0 (as libcni does) and a runtime-side error type."""
    try:
        return cniversion.at_least(v or "0.1.0", other)
    except cniversion.CNIError as e:
        raise LibCNIError(e.msg) from None


def _json_object(raw: bytes, trouble: str) -> dict:
    """``raw`` as a JSON object; LibCNIError starting with ``trouble`` if not."""
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise LibCNIError(f"{trouble}: {e}") from None
    if not isinstance(data, dict):
        raise LibCNIError(f"{trouble}: not a JSON object")
    return data


def conflist_from_bytes(raw: bytes, source: str = "") -> NetworkConfigList:
    where = f" in {source}" if source else ""
    data = _json_object(raw, f"error parsing configuration list{where}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise LibCNIError(f"error parsing configuration list{where}: no name")
    ver = data.get("cniVersion", "")
    if not isinstance(ver, str):
        raise LibCNIError(f"error parsing configuration list{where}: invalid cniVersion type")
    for key in ("disableCheck", "disableGC"):
        if key in data and not isinstance(data[key], bool):
            raise LibCNIError(f"error parsing configuration list{where}: invalid {key} type")
    plugins = data.get("plugins")
    if plugins is None:
        raise LibCNIError(f"error parsing configuration list{where}: no 'plugins' key")
    if not isinstance(plugins, list) or not plugins:
        raise LibCNIError(f"error parsing configuration list{where}: no plugins in list")
    for i, p in enumerate(plugins):
        if not isinstance(p, dict) or not isinstance(p.get("type"), str) or not p["type"]:
            raise LibCNIError(f"failed to parse plugin config {i}{where}: missing 'type'")
    return NetworkConfigList(name=name, cni_version=ver, plugins=plugins, raw=raw,
                             disable_check=data.get("disableCheck", False),
                             disable_gc=data.get("disableGC", False), source=source)


def conflist_from_conf(raw: bytes, source: str = "") -> NetworkConfigList:
    """Up-convert a single-plugin config to a list, as libcni does."""
    where = f" in {source}" if source else ""
    conf = _json_object(raw, f"error parsing configuration{where}")
    if not isinstance(conf.get("type"), str):
        raise LibCNIError(f"error parsing configuration{where}: missing 'type'")
    wrapped = {"name": conf.get("name", ""), "cniVersion": conf.get("cniVersion", ""), "plugins": [conf]}
    return conflist_from_bytes(json.dumps(wrapped).encode(), source)


def load_file(path: str) -> NetworkConfigList:
    with open(path, "rb") as f:
        raw = f.read()
    if path.endswith(".conflist"):
        return conflist_from_bytes(raw, path)
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise LibCNIError(f"error parsing configuration in {path}: {e}") from None
    if isinstance(data, dict) and "plugins" in data:
        return conflist_from_bytes(raw, path)
    return conflist_from_conf(raw, path)


def conf_files(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [os.path.join(directory, n) for n in sorted(names)
            if n.endswith(CONF_EXTENSIONS) and os.path.isfile(os.path.join(directory, n))]


def load_all(directory: str) -> list[NetworkConfigList]:
    return [load_file(p) for p in conf_files(directory)]


def load_conflist(directory: str, name: str) -> NetworkConfigList:
    files = conf_files(directory)
    if not files:
        raise ConfigNotFound(f"no net configurations found in {directory}")
    for path in files:
        conf = load_file(path)
        if conf.name == name:
            return conf
    raise ConfigNotFound(f'no net configuration with name "{name}" in {directory}')


# ---------------------------------------------------------------- runtime

@dataclass
class RuntimeConf:
    container_id: str
    netns: str = ""
    ifname: str = "eth0"
    args: list[tuple[str, str]] = field(default_factory=list)
    capability_args: dict = field(default_factory=dict)


def parse_cni_args(raw: str) -> list[tuple[str, str]]:
    """``"A=b;C=d"`` -> ``[("A", "b"), ("C", "d")]`` (cnitool's parsing)."""
    try:
        return names.parse_cni_args(raw)
    except ValueError as e:
        raise LibCNIError(str(e)) from None


def _stringify_args(args) -> str:
    return ";".join(f"{k}={v}" for k, v in args)


def _validate_runtime(net: str, rt: RuntimeConf) -> None:
    problem = (names.container_id_problem(rt.container_id) or names.network_name_problem(net)
               or names.ifname_problem(rt.ifname))
    if problem:
        raise LibCNIError(problem)


def _setns_preexec(netns_path: str):
    """A preexec_fn entering a network namespace the way `ip netns exec`
    does: setns, a private mount namespace, and a /sys of that netns (so
    /sys/class/net shows the namespace's links)."""
    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWNET, CLONE_NEWNS = 0x40000000, 0x00020000
    MS_REC, MS_SLAVE, MNT_DETACH = 0x4000, 0x80000, 2

    def enter():
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {netns_path}")
        finally:
            os.close(fd)
        if libc.unshare(CLONE_NEWNS) != 0:
            return  # still in the right netns; /sys just shows the old one
        libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None)
        if libc.umount2(b"/sys", MNT_DETACH) == 0:
            libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None)

    return enter


class CNIConfig:
    """The runtime side of CNI: find plugins in ``path`` and run them.

    ``env`` adds variables to the environment plugins inherit (the lab uses
    it for per-host PYCNI_STATE_DIR); ``exec_netns`` runs every plugin
    process inside that network namespace (a path such as
    /run/netns/NAME), the way a node agent runs them in the node's netns.
    """

    def __init__(self, path: list[str] | str | None = None, cache_dir: str | None = None, *,
                 env: dict | None = None, exec_netns: str | None = None, timeout: float = 120):
        if path is None:
            path = os.environ.get("CNI_PATH", "")
        if isinstance(path, str):
            path = [p for p in path.split(os.pathsep) if p]
        self.path = list(path)
        self.cache_dir = cache_dir or os.environ.get("CNI_CACHE_DIR") or DEFAULT_CACHE_DIR
        self.env = dict(env or {})
        self.exec_netns = exec_netns
        self.timeout = timeout

    # -------------------------------------------------------------- exec

    def find_plugin(self, plugin_type: str) -> str:
        if not self.path:
            raise LibCNIError("no paths provided")
        found = execute.find(self.path, plugin_type)
        if found is None:
            raise LibCNIError(f'failed to find plugin "{plugin_type}" in path {self.path}')
        return found

    def _environ(self, command: str, rt: RuntimeConf | None) -> dict:
        base = {**os.environ, **self.env}
        if rt is None:
            return execute.cni_environ(base, command, path=self.path)
        env = execute.cni_environ(base, command, container_id=rt.container_id, netns=rt.netns,
                                  ifname=rt.ifname, args=_stringify_args(rt.args), path=self.path)
        # libcni always sets these, even empty (DEL without a netns)
        env.setdefault("CNI_NETNS", "")
        env.setdefault("CNI_ARGS", "")
        return env

    def exec_plugin(self, plugin_path: str, stdin: bytes, command: str,
                    rt: RuntimeConf | None) -> bytes:
        env = self._environ(command, rt)
        preexec = _setns_preexec(self.exec_netns) if self.exec_netns else None
        plugin = os.path.basename(plugin_path)
        try:
            out = execute.run([plugin_path], env, stdin, timeout=self.timeout, preexec_fn=preexec, cwd="/")
        except OSError as e:
            raise PluginError(5, f"failed to run plugin: {e}", plugin=plugin, command=command) from None
        except subprocess.TimeoutExpired:
            raise PluginError(5, f"plugin timed out after {self.timeout}s", plugin=plugin, command=command) from None
        if out.rc != 0:
            raise _plugin_error(out, plugin, command)
        return out.stdout

    def _run(self, conf: dict, command: str, rt: RuntimeConf | None) -> bytes:
        path = self.find_plugin(conf["type"])
        return self.exec_plugin(path, json.dumps(conf).encode(), command, rt)

    # -------------------------------------------------------------- build

    @staticmethod
    def build_one_config(netconf: NetworkConfigList, plugin: dict, prev_result: dict | None,
                         rt: RuntimeConf) -> dict:
        conf = dict(plugin)
        conf["name"] = netconf.name
        conf["cniVersion"] = netconf.cni_version
        if prev_result is not None:
            conf["prevResult"] = prev_result
        rc = {}
        for cap, enabled in (plugin.get("capabilities") or {}).items():
            if enabled and cap in (rt.capability_args or {}):
                rc[cap] = rt.capability_args[cap]
        if rc:
            conf["runtimeConfig"] = rc
        return conf

    # -------------------------------------------------------------- cache

    def cache_path(self, netname: str, rt: RuntimeConf) -> str:
        if not netname or not rt.container_id or not rt.ifname:
            raise LibCNIError(
                f"cache file path requires network name ({netname!r}), container ID "
                f"({rt.container_id!r}), and interface name ({rt.ifname!r})")
        return os.path.join(self.cache_dir, "results", f"{netname}-{rt.container_id}-{rt.ifname}")

    def _cache_add(self, result: dict, netconf: NetworkConfigList, rt: RuntimeConf) -> None:
        entry = {
            "kind": CACHE_KIND,
            "containerId": rt.container_id,
            "config": base64.b64encode(netconf.raw).decode(),
            "ifName": rt.ifname,
            "networkName": netconf.name,
            "netns": rt.netns,
        }
        if rt.args:
            entry["cniArgs"] = [list(a) for a in rt.args]
        if rt.capability_args:
            entry["capabilityArgs"] = rt.capability_args
        if result:
            entry["result"] = result
        path = self.cache_path(netconf.name, rt)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        write_atomic(path, json.dumps(entry).encode(), mode=0o600)

    def _cache_del(self, netname: str, rt: RuntimeConf) -> None:
        try:
            os.unlink(self.cache_path(netname, rt))
        except (FileNotFoundError, LibCNIError):
            pass

    def read_cache(self, netname: str, rt: RuntimeConf) -> dict | None:
        try:
            with open(self.cache_path(netname, rt), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        entry = _json_object(data, f"failed to unmarshal cached network {netname!r} config")
        if entry.get("kind") != CACHE_KIND:
            # libcni's legacy cache: the file is the bare result
            if "cniVersion" in entry and "kind" not in entry:
                return {"kind": "legacy", "result": entry}
            raise LibCNIError(f"read cached network {netname!r} config has wrong kind: {entry.get('kind')}")
        return entry

    def get_cached_result(self, netconf: NetworkConfigList, rt: RuntimeConf) -> dict | None:
        entry = self.read_cache(netconf.name, rt)
        if not entry or not entry.get("result"):
            return None
        return convert_result(entry["result"], netconf.cni_version)

    def get_cached_config(self, netname: str, rt: RuntimeConf) -> tuple[bytes | None, RuntimeConf]:
        """The conflist bytes cached at ADD and ``rt`` updated with the
        cached CNI args and capability args (libcni's GetNetworkListCachedConfig)."""
        entry = self.read_cache(netname, rt)
        if not entry or entry.get("kind") != CACHE_KIND:
            return None, rt
        new = RuntimeConf(rt.container_id, rt.netns, rt.ifname, list(rt.args), dict(rt.capability_args))
        if entry.get("cniArgs") is not None:
            new.args = [tuple(a) for a in entry["cniArgs"]]
        new.capability_args = entry.get("capabilityArgs") or {}
        return base64.b64decode(entry.get("config", "")), new

    def cached_attachments(self, netname: str | None = None) -> list[dict]:
        """Every cache entry (optionally of one network), as libcni's
        GetCachedAttachments: dicts with containerId, ifName, networkName..."""
        d = os.path.join(self.cache_dir, "results")
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            if ".tmp" in n:
                continue
            try:
                with open(os.path.join(d, n), "rb") as f:
                    entry = json.loads(f.read())
            except (OSError, ValueError):
                continue
            if not isinstance(entry, dict) or entry.get("kind") != CACHE_KIND:
                continue
            if netname is not None and entry.get("networkName") != netname:
                continue
            if not entry.get("containerId") or not entry.get("ifName"):
                continue
            out.append(entry)
        return out

    # -------------------------------------------------------------- verbs

    def add_network_list(self, netconf: NetworkConfigList, rt: RuntimeConf) -> dict:
        _validate_runtime(netconf.name, rt)
        result = None
        for plugin in netconf.plugins:
            conf = self.build_one_config(netconf, plugin, result, rt)
            out = self._run(conf, "ADD", rt)
            result = _parse_result(out, netconf.cni_version, plugin["type"])
        try:
            self._cache_add(result, netconf, rt)
        except OSError as e:
            raise LibCNIError(f"failed to set network {netconf.name!r} cached result: {e}") from None
        return result

    def check_network_list(self, netconf: NetworkConfigList, rt: RuntimeConf) -> None:
        if not version_at_least(netconf.cni_version, "0.4.0"):
            raise LibCNIError(f"configuration version {netconf.cni_version!r} does not support the CHECK command")
        if netconf.disable_check:
            return
        cached = self.get_cached_result(netconf, rt)
        for plugin in netconf.plugins:
            self._run(self.build_one_config(netconf, plugin, cached, rt), "CHECK", rt)

    def del_network_list(self, netconf: NetworkConfigList, rt: RuntimeConf) -> None:
        cached = None
        if version_at_least(netconf.cni_version, "0.4.0"):
            cached = self.get_cached_result(netconf, rt)
        for plugin in reversed(netconf.plugins):
            self._run(self.build_one_config(netconf, plugin, cached, rt), "DEL", rt)
        self._cache_del(netconf.name, rt)

    def gc_network_list(self, netconf: NetworkConfigList, valid_attachments: list[dict] | None = None,
                        *, exclude: list[dict] | None = None) -> list[Exception]:
        """Garbage-collect a network, as libcni's GCNetworkList.

        ``valid_attachments`` are ``{"containerID", "ifname"}`` dicts; when
        None they are built from this network's cache entries, minus those
        in ``exclude`` (matched on containerID and, if given, ifname).
        Cached attachments not valid get a DEL; then, from 1.1.0 on, every
        plugin gets GC with ``cni.dev/valid-attachments``.  Returns the
        errors met (every step is tried); raises nothing for plugin errors.
        """
        if netconf.disable_gc:
            return []
        cached = self.cached_attachments(netconf.name)
        if valid_attachments is None:
            exclude = exclude or []

            def excluded(e):
                return any(x.get("containerID") == e["containerId"]
                           and x.get("ifname", e["ifName"]) == e["ifName"] for x in exclude)
            valid_attachments = [{"containerID": e["containerId"], "ifname": e["ifName"]}
                                 for e in cached if not excluded(e)]
        valid = {(a["containerID"], a["ifname"]) for a in valid_attachments}
        errors: list[Exception] = []
        for entry in cached:
            if (entry["containerId"], entry["ifName"]) in valid:
                continue
            rt = RuntimeConf(entry["containerId"], entry.get("netns", ""), entry["ifName"],
                             [tuple(a) for a in entry.get("cniArgs") or []],
                             entry.get("capabilityArgs") or {})
            try:
                self.del_network_list(netconf, rt)
            except LibCNIError as e:
                errors.append(e)
        if version_at_least(netconf.cni_version, "1.1.0"):
            for plugin in netconf.plugins:
                conf = dict(plugin, name=netconf.name, cniVersion=netconf.cni_version)
                conf[VALID_ATTACHMENTS_KEY] = list(valid_attachments)
                try:
                    self._run(conf, "GC", None)
                except LibCNIError as e:
                    errors.append(e)
        return errors

    def get_status_network_list(self, netconf: NetworkConfigList) -> None:
        """STATUS (1.1.0+): raises PluginError (e.g. code 50) if a plugin
        is not ready; a no-op for older configs."""
        if not version_at_least(netconf.cni_version, "1.1.0"):
            return
        for plugin in netconf.plugins:
            conf = dict(plugin, name=netconf.name, cniVersion=netconf.cni_version)
            self._run(conf, "STATUS", None)

    def get_version_info(self, plugin_type: str, cni_version: str = "1.1.0") -> dict:
        """Probe a plugin with VERSION; returns its JSON answer.  Plugins
        not knowing VERSION are taken to support 0.1.0 only."""
        path = self.find_plugin(plugin_type)
        out = self.exec_plugin(path, json.dumps({"cniVersion": cni_version}).encode(), "VERSION", None)
        try:
            info = json.loads(out)
        except ValueError:
            raise LibCNIError(f"plugin {plugin_type}: bad VERSION output {out[:200]!r}") from None
        if not isinstance(info, dict) or "supportedVersions" not in info:
            return {"cniVersion": "0.1.0", "supportedVersions": ["0.1.0"]}
        return info

    def validate_network_list(self, netconf: NetworkConfigList) -> list[str]:
        """Every plugin exists and supports the list's version; returns the
        capabilities the list enables."""
        errors, caps = [], []
        want = netconf.cni_version or "0.1.0"
        for plugin in netconf.plugins:
            try:
                info = self.get_version_info(plugin["type"])
                if want not in info.get("supportedVersions", []):
                    errors.append(f"plugin {plugin['type']} does not support config version {want!r}")
            except LibCNIError as e:
                errors.append(str(e))
            for cap, on in (plugin.get("capabilities") or {}).items():
                if on and cap not in caps:
                    caps.append(cap)
        if errors:
            raise LibCNIError("; ".join(errors))
        return caps


def _plugin_error(out: execute.Outcome, plugin: str, command: str) -> PluginError:
    """What libcni makes of a failed plugin's output."""
    stderr = out.stderr
    if not out.stdout.strip():
        if stderr.strip():
            msg = f"netplugin failed: {stderr.strip()!r}"
        else:
            msg = f"netplugin failed with no error message: exit status {out.rc}"
        return PluginError(999, msg, plugin=plugin, command=command, stderr=stderr)
    err = out.output
    if not isinstance(err, dict):
        why = out.output_error or "not an object"
        return PluginError(999, f"netplugin failed but error parsing its diagnostic message "
                                f"{out.stdout.decode(errors='replace')!r}: {why}",
                           plugin=plugin, command=command, stderr=stderr)
    code = err.get("code", 999)
    return PluginError(code if isinstance(code, int) else 999, str(err.get("msg", "")),
                       str(err.get("details", "") or ""), plugin=plugin, command=command, stderr=stderr)


def _parse_result(out: bytes, cni_version: str, plugin: str) -> dict:
    try:
        result = json.loads(out) if out.strip() else {}
    except ValueError as e:
        raise PluginError(6, f"failed to parse plugin result: {e}", plugin=plugin, command="ADD") from None
    if result is None:
        result = {}
    if not isinstance(result, dict):
        raise PluginError(6, "plugin result is not a JSON object", plugin=plugin, command="ADD")
    if not result.get("cniVersion"):
        result["cniVersion"] = cni_version  # libcni's fixupResultVersion
    return convert_result(result, cni_version)


def convert_result(result: dict, cni_version: str) -> dict:
    """A result in the list's version (libcni's GetAsVersion)."""
    if not cni_version or result.get("cniVersion") == cni_version:
        return result
    if cni_version in cniversion.SUPPORTED and result.get("cniVersion") in cniversion.SUPPORTED:
        try:
            return cniversion.result_for_version(cniversion.result_to_internal(result, "result"), cni_version)
        except cniversion.CNIError as e:
            raise LibCNIError(e.msg) from None
    return result


def container_id_for_netns(netns_path: str) -> str:
    """cnitool's container ID: "cnitool-" + 20 hex digits of sha512(path)."""
    import hashlib

    return "cnitool-" + hashlib.sha512(netns_path.encode()).hexdigest()[:20]
