"""The kernel side of our tables: read them, apply one transaction, read
counters, and the br_netfilter switches bridged traffic needs.  Everything
goes through libnftables (Debian's python3-nftables) in the calling
process's network namespace.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager

from .ruleset import Table, decode_table

BRIDGE_SYSCTLS = ("/proc/sys/net/bridge/bridge-nf-call-iptables",
                  "/proc/sys/net/bridge/bridge-nf-call-ip6tables")


class NftError(RuntimeError):
    pass


class Kernel:
    def __init__(self):
        import nftables

        self._nft = nftables.Nftables()
        self._nft.set_json_output(True)
        self._nft.set_handle_output(False)

    def _cmd(self, commands: list[dict]) -> dict:
        rc, output, error = self._nft.json_cmd({"nftables": commands})
        if rc != 0:
            raise NftError((error or "nftables command failed").strip())
        return output or {}

    def read_table(self, family: str, name: str) -> Table | None:
        rc, output, _ = self._nft.json_cmd({"nftables": [{"list": {"table": {"family": family, "name": name}}}]})
        if rc != 0:  # no such table
            return None
        return decode_table(family, name, output.get("nftables", []))

    def apply(self, commands: list[dict]) -> None:
        """One atomic transaction: all of it or nothing."""
        if commands:
            self._cmd(commands)

    def counters(self, family: str, table: str) -> dict[str, tuple[int, int]]:
        """name -> (packets, bytes); {} when the table is absent."""
        rc, output, _ = self._nft.json_cmd({"nftables": [{"list": {"counters": {"family": family, "table": table}}}]})
        if rc != 0:
            return {}
        return {c["counter"]["name"]: (c["counter"]["packets"], c["counter"]["bytes"])
                for c in output.get("nftables", []) if "counter" in c}


@contextmanager
def locked():
    """Serialise read-diff-apply against other writers in this network
    namespace (an agent and a one-off `apply`): flock on the namespace
    file, which every process in the netns sees as the same inode."""
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def enable_bridged_filtering() -> list[str]:
    """Make bridged IPv4/IPv6 traffic traverse the inet hooks (br_netfilter;
    per network namespace), which is where pods on one bridge are judged.
    Returns the switches turned on; raises NftError if br_netfilter is
    missing (the bridge guard would then drop every bridged frame of an
    isolated pod)."""
    changed = []
    for path in BRIDGE_SYSCTLS:
        try:
            with open(path) as f:
                if f.read().strip() == "1":
                    continue
            with open(path, "w") as f:
                f.write("1")
        except FileNotFoundError:
            raise NftError(f"{path} is missing: br_netfilter is needed to judge bridged traffic") from None
        changed.append(os.path.basename(path))
    return changed
