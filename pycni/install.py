"""Write one executable per plugin type into a CNI bin dir.

Runtimes exec plugins with only CNI_* variables and no PATH (containerd), so
each executable names its interpreter by absolute path and carries its own
module search path.  It starts the interpreter with -IS (isolated, no site): no site processing
(a few milliseconds on every container start), the search path is written in
at install time instead.
"""
import os
import sys

from cni_plugins.core.records import write_atomic
from cni_plugins.core.registry import PLUGINS

_TEMPLATE = """#!{python} -IS
# pycni {name} plugin, written by `pycni install`.
import sys
sys.path[:0] = {paths!r}
from cni_plugins.core.agent_client import delegate
delegate({name!r})  # answered by `pycni agent` if one serves this node
from cni_plugins.core.skel import main
import {module} as plugin
main(plugin)
"""


def search_path() -> list[str]:
    """The directories our package and its run-time imports come from."""
    import cni_plugins

    paths = [os.path.dirname(os.path.dirname(os.path.abspath(cni_plugins.__file__)))]
    try:
        import nftables  # Debian's python3-nftables, outside the venv

        paths.append(os.path.dirname(os.path.dirname(os.path.abspath(nftables.__file__))))
    except ImportError:
        pass
    return list(dict.fromkeys(paths))


def install(bin_dir: str, plugins: dict[str, str] = PLUGINS) -> list[str]:
    os.makedirs(bin_dir, exist_ok=True)
    paths = search_path()
    written = []
    for name, module in plugins.items():
        target = os.path.join(bin_dir, name)
        text = _TEMPLATE.format(python=sys.executable, name=name, paths=paths, module=module)
        write_atomic(target, text.encode(), mode=0o755)
        written.append(target)
    return written
