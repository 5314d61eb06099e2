"""tuning: change sysctls and interface attributes in the container (chained).

Options are the reference plugin's: ``sysctl`` (net.* keys only, applied in
the container's netns; ``IFNAME`` in a key stands for the container
interface), ``mac`` (also the ``mac`` capability in runtimeConfig and
CNI_ARGS ``MAC``), ``mtu``, ``promisc``, ``allmulti``, ``txQLen``, and the
same under ``args.cni``.  Every key is validated before anything changes.
The original values are recorded (RecordStore "tuning") before the kernel is
touched; DEL restores them, CHECK compares the kernel with the config.
"""
import json
import os
import re

from .kernel import netlink, netns
from .core.errors import CHECK_FAILED, CNIError, INVALID_CONFIG, KERNEL_FAILURE, UNKNOWN_CONTAINER
from .kernel.netlink import Netlink, NetlinkError
from .core.plain import plain
from .core.request import Request
from .core.records import RecordStore

ALLOWLIST = "/etc/cni/tuning/allowlist.conf"
_UNSET = object()


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
    def link_options(self) -> bool:
        return bool(self.mac or self.mtu or self.txqlen is not None
                    or self.promisc is not None or self.allmulti is not None)


def _bad(msg: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"tuning: {msg}")


def _get(conf: dict, key: str, kind, default=_UNSET):
    value = conf.get(key, default)
    if value is _UNSET or value is None:
        return default
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise _bad(f"{key!r} must be {kind.__name__}, got {value!r}")
    return value


def _sysctl_map(value, where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _bad(f"{where} must be an object of strings")
    for k, v in value.items():
        if not isinstance(v, str):
            raise _bad(f"{where}[{k!r}] must be a string, got {v!r}")
    return dict(value)


def _duplicate_sysctl_keys(raw: bytes) -> None:
    """JSON objects may repeat a key (the last wins); for sysctls that hides
    a mistake, and the reference refuses it too."""
    if not raw or b'"sysctl"' not in raw:
        return

    def pairs(items):
        seen = set()
        for k, _ in items:
            if k in seen:
                raise _bad(f"duplicated key {k!r} in the network config")
            seen.add(k)
        return dict(items)

    try:
        doc = json.loads(raw, object_pairs_hook=lambda items: items)
    except ValueError:
        return
    top = dict(doc) if isinstance(doc, list) else {}
    sysctl = top.get("sysctl")
    if isinstance(sysctl, list):
        pairs(sysctl)


def _valid_mac(mac: str) -> str:
    try:
        raw = netlink.mac_bytes(mac)
    except ValueError:
        raw = b""
    if len(raw) != 6 or raw[0] & 1 or mac.count(":") != 5:
        raise _bad(f"invalid unicast MAC {mac!r}")
    return netlink.mac_str(raw)


def parse_config(req: Request) -> TuningConfig:
    c = req.config
    _duplicate_sysctl_keys(req.raw_config)
    cfg = TuningConfig(network=c["name"])
    cfg.sysctl = _sysctl_map(c.get("sysctl") or {}, "sysctl")
    cfg.mac = _get(c, "mac", str, "")
    cfg.mtu = _get(c, "mtu", int, 0)
    cfg.promisc = _get(c, "promisc", bool, None)
    cfg.allmulti = _get(c, "allmulti", bool, None)
    cfg.txqlen = _get(c, "txQLen", int, None)
    _get(c, "dataDir", str, "")  # the reference's backup dir: our records live in RecordStore
    # Precedence as the reference: config < CNI_ARGS MAC < runtimeConfig.mac < args.cni
    if req.args.get("MAC"):
        cfg.mac = req.args["MAC"]
    if req.runtime_config.get("mac"):
        cfg.mac = _get(req.runtime_config, "mac", str, "")
    args = c.get("args")
    cni = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni, dict):
        if cni.get("sysctl") is not None:
            cfg.sysctl.update(_sysctl_map(cni["sysctl"], "args.cni.sysctl"))
        cfg.mac = _get(cni, "mac", str, cfg.mac)
        cfg.mtu = _get(cni, "mtu", int, cfg.mtu)
        cfg.promisc = _get(cni, "promisc", bool, cfg.promisc)
        cfg.allmulti = _get(cni, "allmulti", bool, cfg.allmulti)
        cfg.txqlen = _get(cni, "txQLen", int, cfg.txqlen)
    if cfg.mac:
        cfg.mac = _valid_mac(cfg.mac)
    if cfg.mtu and not 68 <= cfg.mtu <= 65535:
        raise _bad(f"invalid mtu {cfg.mtu}")
    if cfg.txqlen is not None and not 0 <= cfg.txqlen <= 0xFFFFFFFF:
        raise _bad(f"invalid txQLen {cfg.txqlen}")
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
            raise _bad(f"sysctl {key!r} is not allowed by {ALLOWLIST}")


def sysctl_path(key: str, ifname: str) -> str:
    """The /proc/sys path of a dotted net.* key.  ``IFNAME`` and the
    container's interface name (which may itself contain dots) are kept
    whole; anything that could leave /proc/sys/net is refused."""
    if not isinstance(key, str) or not key or "/" in key or "\0" in key or ".." in key \
            or key.startswith(".") or key.endswith("."):
        raise _bad(f"invalid sysctl key {key!r}")
    marker = "\x01"
    spaced = f".{key}."
    if "." in ifname:
        spaced = spaced.replace(f".{ifname}.", f".{marker}.")
    parts = [ifname if p in ("IFNAME", marker) else p for p in spaced[1:-1].split(".")]
    if parts[0] != "net" or len(parts) < 2 or any(p in ("", ".", "..") or "/" in p for p in parts):
        raise _bad(f"invalid net sysctl key {key!r} (only net.* keys may be set)")
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


# --- kernel -------------------------------------------------------------------
def _enter(netns_path: str, code: int) -> int:
    return netns.open_netns(netns_path, code)


def _resolve_sysctls(cfg: TuningConfig, ifname: str) -> dict[str, str]:
    """key -> path for every configured sysctl; inside the container's
    netns.  Raises (code 7) before anything is written."""
    paths = {}
    for key in cfg.sysctl:
        path = sysctl_path(key, ifname)
        if not os.path.isfile(path):
            raise _bad(f"sysctl {key!r} does not exist in the container ({path})")
        paths[key] = path
    return paths


def _link_state(link: netlink.Link, cfg: TuningConfig) -> dict:
    """The current values of the attributes ``cfg`` sets."""
    state = {}
    if cfg.mac:
        state["mac"] = link.mac
    if cfg.mtu:
        state["mtu"] = link.mtu
    if cfg.promisc is not None:
        state["promisc"] = link.promisc
    if cfg.allmulti is not None:
        state["allmulti"] = link.allmulti
    if cfg.txqlen is not None:
        state["txqlen"] = link.txqlen
    return state


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


def _restore(record: dict, netns_fd: int) -> list[str]:
    """Put back what ADD changed; returns what could not be restored.  A
    sysctl is restored only while it still holds the value we wrote (someone
    else may have set it since: theirs wins)."""
    errors = []
    with netns.entered(netns_fd):
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
        if not original:
            return errors
        nl = Netlink()
    with nl:
        link = nl.link(record["ifname"])
        if link is None:
            return errors
        try:
            _set_link(nl, link.index, original)
        except NetlinkError as e:
            errors.append(f"{record['ifname']}: {e}")
    return errors


# --- CNI commands ---------------------------------------------------------------
def _store(req: Request) -> RecordStore:
    return RecordStore("tuning", req.config["name"])



def add(req: Request) -> dict:
    cfg = parse_config(req)
    prev = req.require_prev_result("tuning")
    store = _store(req)
    fd = _enter(req.netns, UNKNOWN_CONTAINER)
    try:
        with netns.entered(fd):
            paths = _resolve_sysctls(cfg, req.ifname)
            originals = {key: _read(path) for key, path in paths.items()}
            cont = Netlink()
        with cont:
            link = cont.link(req.ifname)
            if link is None and cfg.link_options:
                raise CNIError(UNKNOWN_CONTAINER, f"tuning: no interface {req.ifname!r} in the container")
            link_original = _link_state(link, cfg) if link is not None else {}
            # An ADD repeated without DEL: the first record holds the true
            # originals, keep them.
            old = store.load(req.container_id, req.ifname) or {}
            old_sysctl = {i["key"]: i for i in old.get("sysctl", [])}
            link_original.update({k: v for k, v in (old.get("link") or {}).items() if k in link_original})
            record = {
                "containerID": req.container_id, "ifname": req.ifname, "netns": req.netns,
                "sysctl": [{"key": k, "path": paths[k], "value": v,
                            "original": old_sysctl[k]["original"] if k in old_sysctl else originals[k]}
                           for k, v in cfg.sysctl.items()],
                "link": link_original,
            }
            store.save(req.container_id, req.ifname, record)
            try:
                with netns.entered(fd):
                    for key, value in cfg.sysctl.items():
                        try:
                            _write(paths[key], value)
                        except OSError as e:  # a value the kernel refuses, a read-only key
                            raise _bad(f"cannot set {key} = {value!r}: {e.strerror}") from None
                if link is not None and cfg.link_options:
                    wanted = {"mac": cfg.mac, "mtu": cfg.mtu, "promisc": cfg.promisc,
                              "allmulti": cfg.allmulti, "txqlen": cfg.txqlen}
                    try:
                        _set_link(cont, link.index, {k: wanted[k] for k in link_original})
                    except NetlinkError as e:
                        raise CNIError(KERNEL_FAILURE, f"tuning: configuring {req.ifname}: {e}") from None
            except BaseException:
                _restore(record, fd)
                store.remove(req.container_id, req.ifname)
                raise
            mac = cont.link(req.ifname).mac if link is not None else ""
    finally:
        os.close(fd)
    result = json.loads(json.dumps(prev))
    if cfg.mac:
        for iface in result.get("interfaces") or []:
            if iface.get("name") == req.ifname and iface.get("sandbox"):
                iface["mac"] = mac
    return result


def delete(req: Request) -> None:
    store = _store(req)
    record = store.load(req.container_id, req.ifname)
    if record is None:
        return
    path = req.netns  # empty: the netns is gone, and what we changed with it
    if path and os.path.exists(path):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                # Best effort, as the reference: DEL must not fail on a
                # container that is half gone.
                _restore(record, fd)
            finally:
                os.close(fd)
    store.remove(req.container_id, req.ifname)


def check(req: Request) -> None:
    cfg = parse_config(req)
    req.require_prev_result("tuning")
    fd = _enter(req.netns, UNKNOWN_CONTAINER)
    try:
        with netns.entered(fd):
            paths = _resolve_sysctls(cfg, req.ifname)
            for key, value in cfg.sysctl.items():
                current = _read(paths[key])
                if current is not None and _norm(current) != _norm(value):
                    raise CNIError(CHECK_FAILED, f"tuning: {key} is {current!r}, configured {value!r}")
            cont = Netlink()
        with cont:
            link = cont.link(req.ifname)
    finally:
        os.close(fd)
    if link is None:
        raise CNIError(CHECK_FAILED, f"tuning: interface {req.ifname!r} is missing in the container")
    wanted = {"mac": cfg.mac, "mtu": cfg.mtu, "promisc": cfg.promisc, "allmulti": cfg.allmulti,
              "txqlen": cfg.txqlen}
    for key, have in _link_state(link, cfg).items():
        if have != wanted[key]:
            raise CNIError(CHECK_FAILED, f"tuning: {req.ifname} {key} is {have}, configured {wanted[key]}")


def gc(req: Request) -> None:
    """Forget records of attachments the runtime no longer has (their
    containers, and so what we changed, are gone)."""
    _store(req).collect(req.config)
