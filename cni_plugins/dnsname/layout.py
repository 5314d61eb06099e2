"""Where dnsname keeps its state, shared by the plugin (which writes the
records), the resolver (which serves them) and labs (which stop leftover
resolvers).  Everything lives under ``<run dir>/dnsname`` (volatile, like
the resolver)::

    lock                        flock held by every change and resolver start/exit
    resolver-<netns>.pid/.log   the resolver of netns inode <netns>; its control
                                socket (abstract: see resolver_files) takes "reload"
                                and answers "ok", "exit" (it just left: no names
                                left) or "error: ..."; "ping" -> "ok"
    <network>/network.json      {"domain", "gateways", "upstreams", "netns"}
    <network>/<cid>:<ifname>.json  {"containerID", "ifname", "name", "aliases", "ips"}
                                (core.records.record_name)
"""
import fcntl
import glob
import os

from ..core.records import find_record, read_json, record_name

DEFAULT_DOMAIN = "dns.podman"


def base_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "dnsname")


def network_dir(base: str, network: str) -> str:
    return os.path.join(base, network)


def meta_path(base: str, network: str) -> str:
    return os.path.join(base, network, "network.json")


def record_path(base: str, network: str, cid: str, ifname: str) -> str:
    """Where ADD writes a container's record (DEL finds it with find_record)."""
    return os.path.join(base, network, record_name(cid, ifname))


def find_container_record(base: str, network: str, cid: str, ifname: str) -> str | None:
    return find_record(network_dir(base, network), cid, ifname)


def resolver_files(base: str, ino: int) -> dict[str, str]:
    """The resolver's pid and log files, and its control socket: an abstract
    unix socket (scoped to the netns, no path length limit), named after
    the state dir and the netns."""
    import zlib

    stem = os.path.join(base, f"resolver-{ino}")
    sock = f"\0pycni-dnsname-{zlib.crc32(os.path.abspath(base).encode()):08x}-{ino}"
    return {"pid": stem + ".pid", "sock": sock, "log": stem + ".log"}


def resolver_pid_files(run_dir: str) -> list[str]:
    """The pid files of every resolver serving records under ``run_dir``."""
    return glob.glob(os.path.join(base_dir(run_dir), "resolver-*.pid"))


def network_records(netdir: str) -> list[dict]:
    """The container records of one network."""
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
