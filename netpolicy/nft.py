"""The kernel side of our tables: read them, apply one transaction, read
counters, and the br_netfilter switches bridged traffic needs.  Everything
goes through libnftables (Debian's python3-nftables) in the calling
process's network namespace, except transactions of set elements alone,
which go to the kernel directly (cni_plugins/kernel/nfnetlink.py).
"""
from __future__ import annotations

import ctypes
import os
from typing import Mapping

from cni_plugins.kernel.errors import NetlinkError
from cni_plugins.kernel.nfnetlink import Batch, Shape, encode_elements, shared

from .ruleset import SetSpec, Table, decode_element, decode_key, decode_table

BRIDGE_SYSCTLS = ("/proc/sys/net/bridge/bridge-nf-call-iptables",
                  "/proc/sys/net/bridge/bridge-nf-call-ip6tables")


class NftError(RuntimeError):
    pass


class Kernel:
    """Each call gets its own libnftables context, freed (and the heap
    trimmed) when it returns: listing or loading a large table makes
    libnftables allocate hundreds of megabytes, which a long-running agent
    must not keep."""

    def _run(self, commands: list[dict]) -> tuple[int, dict, str]:
        import nftables

        nft = nftables.Nftables()
        nft.set_json_output(True)
        nft.set_handle_output(False)
        try:
            rc, output, error = nft.json_cmd({"nftables": commands})
        finally:
            del nft
            _trim_heap()
        return rc, output or {}, error

    def read_table(self, family: str, name: str) -> Table | None:
        rc, output, _ = self._run([{"list": {"table": {"family": family, "name": name}}}])
        if rc != 0:  # no such table
            return None
        return decode_table(family, name, output.get("nftables", []))

    def apply(self, commands: list[dict], specs: Mapping[tuple[str, str], SetSpec] | None = None) -> None:
        """One atomic transaction: all of it or nothing.  One that only
        adds and deletes elements of sets whose ``specs`` ((family, set) ->
        SetSpec) are given goes straight to the kernel (kernel/nfnetlink.py)."""
        if not commands:
            return
        if specs is not None and all(_element_change(c) for c in commands):
            batch = Batch()
            for command in commands:
                (op, body), = command.items()
                obj = body["element"]
                spec = specs[(obj["family"], obj["name"])]
                items = ([decode_element(spec, e) for e in obj["elem"]] if op == "add"
                         else [(decode_key(spec, e), None) for e in obj["elem"]])
                shape = Shape(spec.key, "verdict" if spec.verdicts else None, spec.interval)
                batch.add(op, obj["family"], obj["table"], obj["name"], encode_elements(shape, items, op == "add"))
            try:
                shared().commit(batch)
            except NetlinkError as e:
                raise NftError(f"nftables transaction failed: {e}") from None
            return
        rc, _, error = self._run(commands)
        if rc != 0:
            raise NftError((error or "nftables transaction failed").strip())

    def counters(self, family: str, table: str) -> dict[str, tuple[int, int]]:
        """name -> (packets, bytes); {} when the table is absent."""
        rc, output, _ = self._run([{"list": {"counters": {"family": family, "table": table}}}])
        if rc != 0:
            return {}
        return {c["counter"]["name"]: (c["counter"]["packets"], c["counter"]["bytes"])
                for c in output.get("nftables", []) if "counter" in c}


def _element_change(command: dict) -> bool:
    (op, body), = command.items()
    return op in ("add", "delete") and list(body) == ["element"]


def _trim_heap() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


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
