"""dnsname: containers on a network resolve each other by name.

A chained plugin, config-compatible with the reference dnsname (the one
podman generates)::

    {"type": "dnsname", "domainName": "dns.podman", "capabilities": {"aliases": true}}

ADD registers the container's name (``K8S_POD_NAME`` in CNI_ARGS, as podman
passes it) and its aliases (``runtimeConfig.aliases``: a map network name ->
list, as podman 4.x sends it, or a plain list) with the addresses of the
prevResult, under the network's domain; DEL removes them.  The result gains
the network's gateways as nameservers and the domain as first search entry.

Names are answered by our resolver (resolver.py), one process per network
namespace serving every network of it on each network's gateway address,
port 53 (UDP and TCP).  The first ADD starts it as a detached daemon; it
exits when the last container of its networks is gone.  Our extension:
``upstreams`` (list of "ADDR" or "ADDR:PORT", "[V6]:PORT") replaces the
host's /etc/resolv.conf servers for the names we do not own.

State, all under ``run_dir()/dnsname`` (volatile, like the resolver)::

    lock                        flock held by every change and resolver start/exit
    resolver-<netns>.pid/.log   the resolver of netns inode <netns>; its control
                                socket (abstract: see resolver_files) takes "reload"
                                and answers "ok", "exit" (it just left: no names
                                left) or "error: ..."; "ping" -> "ok"
    <network>/network.json      {"domain", "gateways", "upstreams", "netns"}
    <network>/<cid>-<ifname>.json  {"containerID", "ifname", "name", "aliases", "ips"}

A record is written before the resolver is told, and DEL works from it.
Module-level imports stay lean: this runs on every container start.
"""
import fcntl
import json
import os
import re
import sys

from ..core.errors import CHECK_FAILED, CNIError, INVALID_CONFIG, IO_FAILURE
from ..core.request import Request
from ..core.records import run_dir, write_atomic

DEFAULT_DOMAIN = "dns.podman"
START_TIMEOUT = 10.0
CONTROL_TIMEOUT = 10.0
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


# --- layout (shared with resolver.py) ---------------------------------------------
def base_dir(rundir: str | None = None) -> str:
    return os.path.join(rundir or run_dir(), "dnsname")


def netns_inode() -> int:
    """The network namespace this thread runs in (the agent's threads may differ)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def resolver_files(base: str, ino: int) -> dict[str, str]:
    """The resolver's pid and log files, and its control socket: an abstract
    unix socket (scoped to the netns, no path length limit), named after
    the state dir and the netns."""
    import zlib

    stem = os.path.join(base, f"resolver-{ino}")
    sock = f"\0pycni-dnsname-{zlib.crc32(os.path.abspath(base).encode()):08x}-{ino}"
    return {"pid": stem + ".pid", "sock": sock, "log": stem + ".log"}


def read_json(path: str):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def network_records(netdir: str) -> list[dict]:
    try:
        names = sorted(os.listdir(netdir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        if name.endswith(".json") and name != "network.json":
            rec = read_json(os.path.join(netdir, name))
            if isinstance(rec, dict):
                out.append(rec)
    return out


class Lock:
    """flock on base/lock: every change of records, and a resolver's start
    and exit, happen under it."""

    def __init__(self, base: str):
        self.base = base

    def __enter__(self):
        os.makedirs(self.base, exist_ok=True)
        self.fd = os.open(os.path.join(self.base, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock


# --- talking to the resolver ------------------------------------------------------
def control(sock_path: str, command: bytes = b"reload", timeout: float = CONTROL_TIMEOUT) -> str | None:
    """Send one command; None when no resolver listens there."""
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        try:
            s.connect(sock_path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        s.sendall(command + b"\n")
        chunks = []
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace").strip()
    except OSError as e:
        raise CNIError(IO_FAILURE, f"dnsname: resolver control socket {sock_path}: {e}") from None
    finally:
        s.close()


def _package_root() -> str:
    """The directory holding the cni_plugins package (the resolver runs with -IS)."""
    import cni_plugins

    return os.path.dirname(os.path.dirname(os.path.abspath(cni_plugins.__file__)))


def start_resolver(base: str, ino: int) -> None:
    """Start the resolver as a detached daemon (new session, stdio to its
    log) with this interpreter, and wait until it serves.  Caller holds the lock."""
    import select

    files = resolver_files(base, ino)
    boot = (f"import sys; sys.path[:0] = {[_package_root()]!r}; "
            "from cni_plugins.dnsname.resolver import main; main()")
    rfd, wfd = os.pipe()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        pid = os.posix_spawn(
            sys.executable, [sys.executable, "-IS", "-c", boot, "--daemon", "--base", base, "--netns", str(ino)],
            env, setsid=True,
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                          (os.POSIX_SPAWN_DUP2, wfd, 1),
                          (os.POSIX_SPAWN_OPEN, 2, files["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)])
    except OSError as e:
        os.close(rfd)
        os.close(wfd)
        raise CNIError(IO_FAILURE, f"dnsname: cannot start the resolver: {e}") from None
    os.close(wfd)
    try:
        os.waitpid(pid, 0)  # the resolver forks once more; its first process exits at once
        got = b""
        ready, _, _ = select.select([rfd], [], [], START_TIMEOUT)
        while ready:
            chunk = os.read(rfd, 4096)
            if not chunk:
                break
            got += chunk
            if b"\n" in got:
                break
            ready, _, _ = select.select([rfd], [], [], START_TIMEOUT)
    finally:
        os.close(rfd)
    if not got.startswith(b"ready"):
        detail = got.decode(errors="replace").strip() or f"no answer; see {files['log']}"
        raise CNIError(IO_FAILURE, f"dnsname: the resolver did not start: {detail}")


def notify(base: str, ino: int, start: bool) -> str:
    """Make the resolver of this netns load the current records (starting
    it if ``start`` and none runs).  Caller holds the lock."""
    files = resolver_files(base, ino)
    answer = control(files["sock"])
    if answer is None:
        if not start:
            return "none"
        start_resolver(base, ino)
        answer = control(files["sock"])
    if answer is None:
        raise CNIError(IO_FAILURE, "dnsname: the resolver went away")
    if answer.startswith("error"):
        raise CNIError(IO_FAILURE, f"dnsname: resolver: {answer}")
    return answer


# --- config -----------------------------------------------------------------------
def _check_name(what: str, name) -> str:
    if not isinstance(name, str):
        raise CNIError(INVALID_CONFIG, f"dnsname: {what} must be a string, got {name!r}")
    name = name.rstrip(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise CNIError(INVALID_CONFIG, f"dnsname: {what} {name!r} is not a valid DNS name")
    return name.lower()


def parse_config(req: Request) -> dict:
    c = req.config
    domain = c.get("domainName")
    domain = _check_name("domainName", domain) if domain else DEFAULT_DOMAIN
    upstreams = c.get("upstreams") or []
    if not isinstance(upstreams, list) or not all(isinstance(u, str) and u for u in upstreams):
        raise CNIError(INVALID_CONFIG, "dnsname: upstreams must be a list of addresses")
    aliases = req.runtime_config.get("aliases") or []
    if isinstance(aliases, dict):  # podman: network name -> aliases
        aliases = aliases.get(c["name"]) or []
    if not isinstance(aliases, list):
        raise CNIError(INVALID_CONFIG, "dnsname: runtimeConfig.aliases must be a map of lists or a list")
    name = req.args.get("K8S_POD_NAME", "")
    return {
        "network": c["name"],
        "domain": domain,
        "upstreams": upstreams,
        "name": _check_name("K8S_POD_NAME", name) if name else "",
        "aliases": list(dict.fromkeys(_check_name("alias", a) for a in aliases)),
    }


def _bare(addr: str) -> str:
    return addr.split("/")[0]


def _gateways(prev: dict) -> list[str]:
    gws = [ip["gateway"] for ip in prev.get("ips") or [] if ip.get("gateway")]
    if not gws:
        # no gateway in the result: the addresses of the (bridge) interface
        # that holds the container's networks, as the reference does
        from ..kernel.netlink import Netlink

        import ipaddress

        nets = [ipaddress.ip_interface(ip["address"]).network for ip in prev.get("ips") or []]
        host_ifs = [i["name"] for i in prev.get("interfaces") or [] if not i.get("sandbox")]
        with Netlink() as nl:
            for name in host_ifs:
                link = nl.link(name)
                if link is not None:
                    gws += [str(a.ip) for _, a in nl.addresses(link.index) if a.network in nets]
    return list(dict.fromkeys(_bare(g) for g in gws))


# --- CNI commands -----------------------------------------------------------------
def _record_path(base: str, network: str, cid: str, ifname: str) -> str:
    return os.path.join(base, network, f"{cid}-{ifname}.json")


def _drop_network_if_empty(netdir: str) -> None:
    if not network_records(netdir):
        for name in os.listdir(netdir) if os.path.isdir(netdir) else []:
            try:
                os.unlink(os.path.join(netdir, name))
            except OSError:
                pass
        try:
            os.rmdir(netdir)
        except OSError:
            pass


def add(req: Request) -> dict:
    cfg = parse_config(req)
    prev = req.require_prev_result("dnsname")
    ips = [ip["address"] for ip in prev.get("ips") or []]
    if not ips:
        raise CNIError(INVALID_CONFIG, "dnsname: prevResult has no IP addresses")
    gateways = _gateways(prev)
    if not gateways:
        raise CNIError(INVALID_CONFIG, "dnsname: no gateway address to serve DNS on "
                                       "(set isGateway on the bridge)")
    base = base_dir()
    ino = netns_inode()
    netdir = os.path.join(base, cfg["network"])
    meta = {"domain": cfg["domain"], "gateways": gateways, "upstreams": cfg["upstreams"], "netns": ino}
    record = {"containerID": req.container_id, "ifname": req.ifname, "name": cfg["name"],
              "aliases": cfg["aliases"], "ips": ips}
    with Lock(base):
        old = read_json(os.path.join(netdir, "network.json"))
        if isinstance(old, dict):  # keep gateways other containers got
            meta["gateways"] = list(dict.fromkeys(gateways + list(old.get("gateways") or [])))
        if old != meta:
            write_atomic(os.path.join(netdir, "network.json"), json.dumps(meta).encode())
        path = _record_path(base, cfg["network"], req.container_id, req.ifname)
        write_atomic(path, json.dumps(record).encode())
        try:
            notify(base, ino, start=True)
        except BaseException:
            os.unlink(path)
            _drop_network_if_empty(netdir)
            try:
                notify(base, ino, start=False)
            except CNIError:
                pass
            raise

    result = dict(prev)
    dns = dict(result.get("dns") or {})
    dns["nameservers"] = list(dict.fromkeys(gateways + list(dns.get("nameservers") or [])))
    dns["search"] = list(dict.fromkeys([cfg["domain"]] + list(dns.get("search") or [])))
    result["dns"] = dns
    return result


def delete(req: Request) -> None:
    network = req.config["name"]
    base = base_dir()
    netdir = os.path.join(base, network)
    path = _record_path(base, network, req.container_id, req.ifname)
    if not os.path.exists(path):
        return
    with Lock(base):
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        meta = read_json(os.path.join(netdir, "network.json")) or {}
        _drop_network_if_empty(netdir)
        try:
            notify(base, meta.get("netns") or netns_inode(), start=False)
        except CNIError:
            pass  # the name is gone from our records; DEL must not fail for the resolver


def check(req: Request) -> None:
    parse_config(req)
    if req.prev_result is None:
        raise CNIError(INVALID_CONFIG, "dnsname: CHECK needs prevResult")
    base = base_dir()
    network = req.config["name"]
    if read_json(_record_path(base, network, req.container_id, req.ifname)) is None:
        raise CNIError(CHECK_FAILED, f"dnsname: no record of {req.container_id}/{req.ifname} on {network}")
    meta = read_json(os.path.join(base, network, "network.json")) or {}
    answer = control(resolver_files(base, meta.get("netns") or netns_inode())["sock"], b"ping")
    if answer != "ok":
        raise CNIError(CHECK_FAILED, f"dnsname: the resolver of network {network} is not running")


def gc(req: Request) -> None:
    valid = {(a.get("containerID"), a.get("ifname")) for a in req.config.get("cni.dev/valid-attachments") or []}
    network = req.config["name"]
    base = base_dir()
    netdir = os.path.join(base, network)
    if not os.path.isdir(netdir):
        return
    with Lock(base):
        meta = read_json(os.path.join(netdir, "network.json")) or {}
        for rec in network_records(netdir):
            if (rec.get("containerID"), rec.get("ifname")) not in valid:
                try:
                    os.unlink(_record_path(base, network, rec.get("containerID"), rec.get("ifname")))
                except OSError:
                    pass
        _drop_network_if_empty(netdir)
        notify(base, meta.get("netns") or netns_inode(), start=False)
