"""What `pycni lab status` shows: hosts (with each one's agent and lease
on an overlay lab), networks and pods, as JSON or as tables."""
from __future__ import annotations

from . import agents, etcd
from .spec import LabError


def _host(state: dict, host: dict) -> dict:
    out = {"name": host["name"], "netns": host["netns"], "underlay": host["underlay"]}
    if state.get("overlay"):
        report = agents.status(host)
        overlay = (report or {}).get("duties", {}).get("overlay") or {}
        out["agent"] = {"pid": agents.running(host), "state": (report or {}).get("state", "down"),
                        "ready": bool((report or {}).get("ready")), "peers": overlay.get("peers", []),
                        "lastError": overlay.get("lastError"),
                        "leaseExpires": (overlay.get("lease") or {}).get("expires")}
        out["lease"] = agents.lease(state, host)
    return out


def status_json(state: dict) -> dict:
    def bare(addr):
        return addr.split("/")[0]

    return {
        "name": state["name"],
        "phase": state.get("phase"),
        "dir": state["dir"],
        "cniPath": state.get("binDir"),
        "hosts": [_host(state, h) for h in state["hosts"]],
        "networks": [{"name": n["name"], **{k: n[k] for k in ("type", "subnet", "subnet6", "clusterCIDR",
                                                             "clusterCIDR6", "bridge") if k in n}}
                     for n in state["networks"]],
        **({"etcd": etcd.status(state["overlay"]["etcd"])} if (state.get("overlay") or {}).get("etcd") else {}),
        "pods": [{"name": p["name"], "namespace": p["namespace"], "host": p["host"],
                  "network": p["network"], "netns": p["netns"], "ifname": p["ifname"],
                  "containerId": p["containerId"],
                  "ips": [bare(a) for a in p["ips"]], "addresses": p["ips"],
                  "gateways": [ip["gateway"] for ip in (p.get("result") or {}).get("ips", []) if ip.get("gateway")]}
                 for p in state["pods"]],
    }


def format_status(s: dict) -> str:
    lines = [f"lab {s['name']} ({s['phase']})  dir {s['dir']}  plugins {s['cniPath']}", ""]
    rows = [("HOST", "NETNS", "UNDERLAY")] + [(h["name"], h["netns"], h["underlay"] or "-") for h in s["hosts"]]
    if any("agent" in h for h in s["hosts"]):
        rows[0] += ("AGENT", "SUBNETS")
        for i, h in enumerate(s["hosts"], start=1):
            agent, lease = h["agent"], h["lease"] or {}
            state = "ready" if agent["ready"] else agent["state"]
            if agent["lastError"]:
                state += f" ({agent['lastError']})"
            rows[i] += (state, ",".join(filter(None, (lease.get("subnet"), lease.get("subnet6")))) or "-")
    lines += _table(rows) + [""]
    rows = [("POD", "HOST", "NETWORK", "NETNS", "IPS")] + [
        (f"{p['namespace']}/{p['name']}", p["host"], p["network"], p["netns"], ",".join(p["addresses"]) or "-")
        for p in s["pods"]]
    lines += _table(rows)
    return "\n".join(lines)


def _table(rows) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def find_pod(state: dict, ref: str) -> dict:
    if "/" in ref:
        ns, _, name = ref.partition("/")
        matches = [p for p in state["pods"] if p["namespace"] == ns and p["name"] == name]
    else:
        matches = [p for p in state["pods"] if p["name"] == ref]
    if not matches:
        raise LabError(f"lab {state['name']}: no pod {ref!r}")
    if len(matches) > 1:
        raise LabError(f"lab {state['name']}: pod name {ref!r} is ambiguous; use NAMESPACE/NAME")
    return matches[0]
