"""tuning: change sysctls and interface attributes in the container (chained).

Options are the reference plugin's: ``sysctl`` (net.* keys only, applied in
the container's netns; ``IFNAME`` in a key stands for the container
interface), ``mac`` (also the ``mac`` capability in runtimeConfig and
CNI_ARGS ``MAC``), ``mtu``, ``promisc``, ``allmulti``, ``txQLen``, and the
same under ``args.cni``.  Every key is validated before anything changes.

config -> plan -> kernel: what the container has now is read first
(``observe``), the plan (``make_plan``, pure) is the record itself: each
sysctl with its path, wanted and original value, the link attributes'
originals and wanted values.  It is written before the kernel is touched;
DEL restores the originals from it, CHECK compares the kernel with the
config.
"""
import json
import os
import re

from .core.attachment import commit, release, store_for
from .core.config import bad_config, typed, unicast_mac
from .core.errors import CNIError, UNKNOWN_CONTAINER, kernel_failure, require_same
from .core.plain import plain
from .core.request import Request
from .core.sandbox import Sandbox
from .kernel import netlink
from .kernel.netlink import Netlink, NetlinkError

PLUGIN = "tuning"
ALLOWLIST = "/etc/cni/tuning/allowlist.conf"


# --- config -------------------------------------------------------------------
@plain
class TuningConfig:
    network: str
    sysctl: dict[str, str] = {}   # key as given -> value
    mac: str = ""
    mtu: int = 0
    promisc: bool | None = None
    allmulti: bool | None = None
    txqlen: int | None = None

    @property
    def link_wanted(self) -> dict:
        """The link attributes this config sets, and to what."""
        wanted = {"mac": self.mac or None, "mtu": self.mtu or None, "promisc": self.promisc,
                  "allmulti": self.allmulti, "txqlen": self.txqlen}
        return {k: v for k, v in wanted.items() if v is not None}


def _sysctl_map(value, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise bad_config(PLUGIN, f"{where} must be an object of strings")
    for k, v in value.items():
        if not isinstance(v, str):
            raise bad_config(PLUGIN, f"{where}[{k!r}] must be a string, got {v!r}")
    return dict(value)


class _Pairs(list):
    """A JSON object read as its (key, value) pairs, repeats kept."""


def _duplicate_sysctl_keys(raw: bytes) -> None:
    """JSON objects may repeat a key (the last wins); for sysctls that hides
    a mistake, and the reference refuses it too."""
    if not raw or b'"sysctl"' not in raw:
        return
    try:
        doc = json.loads(raw, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError):
        return  # the request parser reports what is wrong with it
    sysctl = dict(doc).get("sysctl") if isinstance(doc, _Pairs) else None
    if isinstance(sysctl, _Pairs):  # an array stays a plain list: parse_config refuses it
        seen = set()
        for key, _ in sysctl:
            if key in seen:
                raise bad_config(PLUGIN, f"duplicated key {key!r} in the network config")
            seen.add(key)


def parse_config(req: Request) -> TuningConfig:
    c = req.config
    _duplicate_sysctl_keys(req.raw_config)
    cfg = TuningConfig(network=c["name"])
    cfg.sysctl = _sysctl_map(c.get("sysctl") or {}, "sysctl")
    cfg.mac = typed(PLUGIN, c, "mac", str, "")
    cfg.mtu = typed(PLUGIN, c, "mtu", int, 0)
    cfg.promisc = typed(PLUGIN, c, "promisc", bool, None)
    cfg.allmulti = typed(PLUGIN, c, "allmulti", bool, None)
    cfg.txqlen = typed(PLUGIN, c, "txQLen", int, None)
    typed(PLUGIN, c, "dataDir", str, "")  # the reference's backup dir: our records live in RecordStore
    # Precedence as the reference: config < CNI_ARGS MAC < runtimeConfig.mac < args.cni
    if req.args.get("MAC"):
        cfg.mac = req.args["MAC"]
    if req.runtime_config.get("mac"):
        cfg.mac = typed(PLUGIN, req.runtime_config, "mac", str, "")
    cni = req.args_cni
    if cni:
        if cni.get("sysctl") is not None:
            cfg.sysctl.update(_sysctl_map(cni["sysctl"], "args.cni.sysctl"))
        cfg.mac = typed(PLUGIN, cni, "mac", str, cfg.mac)
        cfg.mtu = typed(PLUGIN, cni, "mtu", int, cfg.mtu)
        cfg.promisc = typed(PLUGIN, cni, "promisc", bool, cfg.promisc)
        cfg.allmulti = typed(PLUGIN, cni, "allmulti", bool, cfg.allmulti)
        cfg.txqlen = typed(PLUGIN, cni, "txQLen", int, cfg.txqlen)
    if cfg.mac:
        cfg.mac = unicast_mac(PLUGIN, cfg.mac)
    if cfg.mtu and not 68 <= cfg.mtu <= 65535:
        raise bad_config(PLUGIN, f"invalid mtu {cfg.mtu}")
    if cfg.txqlen is not None and not 0 <= cfg.txqlen <= 0xFFFFFFFF:
        raise bad_config(PLUGIN, f"invalid txQLen {cfg.txqlen}")
    _check_allowlist(cfg.sysctl)
    return cfg


def _check_allowlist(sysctl: dict) -> None:
    """/etc/cni/tuning/allowlist.conf, as the reference: one regular
    expression a line; when the file exists every key must match one."""
    try:
        with open(ALLOWLIST) as f:
            patterns = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return
    for key in sysctl:
        if not any(re.search(p, key) for p in patterns):
            raise bad_config(PLUGIN, f"sysctl {key!r} is not allowed by {ALLOWLIST}")


def sysctl_path(key: str, ifname: str) -> str:
    """The /proc/sys path of a dotted net.* key.  ``IFNAME`` and the
    container's interface name (which may itself contain dots) are kept
    whole; anything that could leave /proc/sys/net is refused."""
    if not isinstance(key, str) or not key or "/" in key or "\0" in key or ".." in key \
            or key.startswith(".") or key.endswith("."):
        raise bad_config(PLUGIN, f"invalid sysctl key {key!r}")
    marker = "\x01"
    spaced = f".{key}."
    if "." in ifname:
        spaced = spaced.replace(f".{ifname}.", f".{marker}.")
    parts = [ifname if p in ("IFNAME", marker) else p for p in spaced[1:-1].split(".")]
    if parts[0] != "net" or len(parts) < 2 or any(p in ("", ".", "..") or "/" in p for p in parts):
        raise bad_config(PLUGIN, f"invalid net sysctl key {key!r} (only net.* keys may be set)")
    return "/proc/sys/" + "/".join(parts)


def _norm(value: str) -> str:
    """Multi-valued sysctls read back tab-separated: compare by fields."""
    return " ".join(value.split())


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except PermissionError:
        return None  # write-only (e.g. net.ipv4.route.flush)


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


# --- plan ---------------------------------------------------------------------
@plain
class Observed:
    """What the container has now, of what the config touches."""
    paths: dict[str, str]       # sysctl key -> /proc/sys path
    sysctls: dict               # key -> current value (None: write-only)
    link: dict | None           # current values of the attributes the config sets; None: no interface


def make_plan(cfg: TuningConfig, req: Request, seen: Observed, old: dict | None) -> dict:
    """The record ADD writes and applies.  An ADD repeated without DEL keeps
    the first record's originals (they are the true ones) and what the first
    changed that this config leaves alone, so DEL restores all of it."""
    if seen.link is None and cfg.link_wanted:
        raise CNIError(UNKNOWN_CONTAINER, f"tuning: no interface {req.ifname!r} in the container")
    old = old or {}
    old_sysctl = {i["key"]: i for i in old.get("sysctl", [])}
    return {
        "containerID": req.container_id, "ifname": req.ifname, "netns": req.netns,
        "sysctl": [{"key": k, "path": seen.paths[k], "value": v,
                    "original": old_sysctl[k]["original"] if k in old_sysctl else seen.sysctls[k]}
                   for k, v in cfg.sysctl.items()] + [i for k, i in old_sysctl.items() if k not in cfg.sysctl],
        "link": {**(seen.link or {}), **(old.get("link") or {})},
        "linkWanted": {k: v for k, v in cfg.link_wanted.items() if seen.link is not None},
    }


def differences(cfg: TuningConfig, ifname: str, seen: Observed) -> list[str]:
    out = [f"{key} is {seen.sysctls[key]!r}, configured {value!r}" for key, value in cfg.sysctl.items()
           if seen.sysctls[key] is not None and _norm(seen.sysctls[key]) != _norm(value)]
    if seen.link is None:
        return out + [f"interface {ifname!r} is missing in the container"]
    return out + [f"{ifname} {key} is {seen.link[key]}, configured {value}"
                  for key, value in cfg.link_wanted.items() if seen.link[key] != value]


# --- kernel -------------------------------------------------------------------
def _link_state(link: netlink.Link, keys) -> dict:
    state = {"mac": link.mac, "mtu": link.mtu, "promisc": link.promisc, "allmulti": link.allmulti,
             "txqlen": link.txqlen}
    return {k: state[k] for k in keys}


def observe(cfg: TuningConfig, ifname: str, sandbox: Sandbox) -> Observed:
    """Resolve every configured sysctl inside the container (code 7 for one
    that does not exist, before anything is written) and read the current
    values."""
    with sandbox.entered():
        paths = {}
        for key in cfg.sysctl:
            path = sysctl_path(key, ifname)
            if not os.path.isfile(path):
                raise bad_config(PLUGIN, f"sysctl {key!r} does not exist in the container ({path})")
            paths[key] = path
        current = {key: _read(path) for key, path in paths.items()}
    link = sandbox.nl.link(ifname)
    return Observed(paths=paths, sysctls=current,
                    link=_link_state(link, cfg.link_wanted) if link is not None else None)


def _set_link(nl: Netlink, index: int, values: dict) -> None:
    if "mtu" in values:
        nl.set_link(index, mtu=values["mtu"])
    if "mac" in values:
        nl.set_link_attrs(index, mac=values["mac"])
    if "promisc" in values:
        nl.set_link(index, promisc=values["promisc"])
    if "allmulti" in values:
        nl.set_link_attrs(index, allmulti=values["allmulti"])
    if "txqlen" in values:
        nl.set_link_attrs(index, txqlen=values["txqlen"])


def apply(plan: dict, sandbox: Sandbox) -> str:
    """Write the sysctls and link attributes; returns the interface's MAC now."""
    with sandbox.entered():
        for item in plan["sysctl"]:
            try:
                _write(item["path"], item["value"])
            except OSError as e:  # a value the kernel refuses, a read-only key
                raise bad_config(PLUGIN, f"cannot set {item['key']} = {item['value']!r}: {e.strerror}") from None
    link = sandbox.nl.link(plan["ifname"])
    if link is None:
        return ""
    if plan["linkWanted"]:
        try:
            _set_link(sandbox.nl, link.index, plan["linkWanted"])
        except NetlinkError as e:
            raise kernel_failure(PLUGIN, f"configuring {plan['ifname']}", e) from None
        link = sandbox.nl.link(plan["ifname"])
    return link.mac


def restore(record: dict, sandbox: Sandbox) -> list[str]:
    """Put back what ADD changed; returns what could not be restored.  A
    sysctl is restored only while it still holds the value we wrote (someone
    else may have set it since: theirs wins)."""
    errors = []
    with sandbox.entered():
        for item in reversed(record.get("sysctl", [])):
            if item.get("original") is None:
                continue
            try:
                current = _read(item["path"])
                if current is not None and _norm(current) == _norm(item["value"]):
                    _write(item["path"], item["original"])
            except FileNotFoundError:
                pass  # a per-interface key whose interface is gone
            except OSError as e:
                errors.append(f"{item['key']}: {e.strerror}")
    original = record.get("link") or {}
    link = sandbox.nl.link(record["ifname"]) if original else None
    if link is not None:
        try:
            _set_link(sandbox.nl, link.index, original)
        except NetlinkError as e:
            errors.append(f"{record['ifname']}: {e}")
    return errors


def _restore_if_present(record: dict, netns_path: str) -> None:
    """Best effort, as the reference: DEL must not fail on a container that
    is half gone (with its netns gone, what we changed went with it)."""
    sandbox = Sandbox.if_present(netns_path)
    if sandbox is not None:
        with sandbox:
            restore(record, sandbox)


# --- CNI commands ---------------------------------------------------------------
def add(req: Request) -> dict:
    cfg = parse_config(req)
    prev = req.require_prev_result(PLUGIN)
    store = store_for(req, PLUGIN)
    with Sandbox(req.netns) as sandbox:
        plan = make_plan(cfg, req, observe(cfg, req.ifname, sandbox), store.load(req.container_id, req.ifname))
        mac = commit(store, req, plan, lambda: apply(plan, sandbox), lambda record: restore(record, sandbox))
    result = json.loads(json.dumps(prev))
    if cfg.mac:
        for iface in result.get("interfaces") or []:
            if iface.get("name") == req.ifname and iface.get("sandbox"):
                iface["mac"] = mac
    return result


def delete(req: Request) -> None:
    release(store_for(req, PLUGIN), req, lambda record: _restore_if_present(record, req.netns))


def check(req: Request) -> None:
    cfg = parse_config(req)
    req.require_prev_result(PLUGIN)
    with Sandbox(req.netns, UNKNOWN_CONTAINER) as sandbox:
        seen = observe(cfg, req.ifname, sandbox)
    require_same(PLUGIN, differences(cfg, req.ifname, seen))


def gc(req: Request) -> None:
    """Forget records of attachments the runtime no longer has (their
    containers, and so what we changed, are gone)."""
    store_for(req, PLUGIN).collect(req.config)
