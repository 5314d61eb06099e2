"""bridge that ignores the config's cniVersion and always answers in 1.1.0.
Caught by: result.version (for every version but 1.1.0)."""
from cni_plugins import bridge
from _base import run


def post(status, output, environ):
    if status == 0 and environ.get("CNI_COMMAND") == "ADD" and isinstance(output, dict):
        output["cniVersion"] = "1.1.0"
        for ip in output.get("ips") or []:
            ip.pop("version", None)
    return output


run(bridge, post=post)
