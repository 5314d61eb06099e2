"""What `pycni lab status` shows: hosts (with each one's agent: its lease
on an overlay lab, what it enforces on a policy lab), networks, pods (their
labels), and where the lab's policy objects and pods are, as JSON or as
tables."""
from __future__ import annotations

from . import agents, etcd, hosts, policy
from .spec import LabError


def _host(state: dict, host: dict) -> dict:
    out = {"name": host["name"], "netns": host["netns"], "underlay": host["underlay"]}
    if not agents.needed(state):
        return out
    report = agents.status(host) or {}
    duties = report.get("duties", {})
    out["agent"] = {"pid": agents.running(host), "state": report.get("state", "down"),
                    "ready": bool(report.get("ready"))}
    if state["overlay"]:
        overlay = duties.get("overlay") or {}
        out["agent"].update(peers=overlay.get("peers", []), lastError=overlay.get("lastError"),
                            leaseExpires=(overlay.get("lease") or {}).get("expires"))
        out["lease"] = agents.lease(state, host)
    if state.get("policy"):
        found = duties.get("policy") or {}
        out["agent"]["policy"] = {key: found.get(key) for key in ("policies", "endpoints", "errors")}
    return out


def _policy(state: dict) -> dict:
    """Where the lab's policy objects and pods are, for `pycni policy
    explain|status -f OBJECTS [--store STORE | --state-dir HOST's]`."""
    overlay = (state.get("overlay") or {}).get("settings")
    store = None
    if overlay:
        store = (f"file:{overlay['storePath']}" if overlay["store"] == "file"
                 else "etcd:" + ",".join(overlay["etcdEndpoints"]))
    return {"objects": policy.objects_dir(state), "store": store, "storePrefix": (overlay or {}).get("etcdPrefix"),
            "stateDirs": {h["name"]: hosts.state_dir(h) for h in state["hosts"]},
            "namespaces": {o["metadata"]["name"]: o["metadata"].get("labels", {})
                           for o in state["objects"] if o.get("kind") == "Namespace"},
            "policies": [f"{o['metadata'].get('namespace', 'default')}/{o['metadata']['name']}"
                         for o in state["objects"] if o.get("kind") == "NetworkPolicy"]}


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
        **({"networkPolicy": _policy(state)} if state.get("policy") else {}),
        "pods": [{"name": p["name"], "namespace": p["namespace"], "host": p["host"],
                  "network": p["network"], "netns": p["netns"], "ifname": p["ifname"],
                  "containerId": p["containerId"], "labels": p.get("labels", {}), "ports": p.get("ports", []),
                  "ips": [bare(a) for a in p["ips"]], "addresses": p["ips"],
                  "gateways": [ip["gateway"] for ip in (p.get("result") or {}).get("ips", []) if ip.get("gateway")]}
                 for p in state["pods"]],
    }


def format_status(s: dict) -> str:
    lines = [f"lab {s['name']} ({s['phase']})  dir {s['dir']}  plugins {s['cniPath']}", ""]
    rows = [("HOST", "NETNS", "UNDERLAY")] + [(h["name"], h["netns"], h["underlay"] or "-") for h in s["hosts"]]
    if any("agent" in h for h in s["hosts"]):
        rows[0] += ("AGENT",)
        for i, h in enumerate(s["hosts"], start=1):
            agent = h["agent"]
            state = "ready" if agent["ready"] else agent["state"]
            errors = [agent.get("lastError")] + ((agent.get("policy") or {}).get("errors") or [])
            if any(errors):
                state += f" ({'; '.join(filter(None, errors))})"
            rows[i] += (state,)
    if any("lease" in h for h in s["hosts"]):
        rows[0] += ("SUBNETS",)
        for i, h in enumerate(s["hosts"], start=1):
            lease = h["lease"] or {}
            rows[i] += (",".join(filter(None, (lease.get("subnet"), lease.get("subnet6")))) or "-",)
    lines += _table(rows) + [""]
    rows = [("POD", "HOST", "NETWORK", "NETNS", "IPS")] + [
        (f"{p['namespace']}/{p['name']}", p["host"], p["network"], p["netns"], ",".join(p["addresses"]) or "-")
        for p in s["pods"]]
    if "networkPolicy" in s:
        rows[0] += ("LABELS",)
        for i, p in enumerate(s["pods"], start=1):
            rows[i] += (",".join(f"{k}={v}" for k, v in p["labels"].items()) or "-",)
    lines += _table(rows)
    if "networkPolicy" in s:
        lines += ["", "policies: " + (", ".join(s["networkPolicy"]["policies"]) or "none")]
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
