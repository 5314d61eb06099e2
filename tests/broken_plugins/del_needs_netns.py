"""bridge whose DEL insists on entering the container netns first, so DEL
fails once the netns is gone.  Caught by: del.missing-netns."""
import os
import types

from cni_plugins import bridge
from cni_plugins.kernel import netns
from _base import run


def delete(req):
    os.close(netns.open_netns(req.netns))
    bridge.delete(req)


plugin = types.SimpleNamespace(add=bridge.add, check=bridge.check, delete=delete,
                               gc=bridge.gc, status=bridge.status)
run(plugin)
