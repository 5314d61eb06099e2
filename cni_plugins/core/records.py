"""Where pycni keeps its own records.

Persistent records (what an attachment made, so DEL and GC can undo it from
our own data) live under /var/lib/pycni; volatile ones (sockets, pid files)
under /run/pycni.  PYCNI_STATE_DIR and PYCNI_RUN_DIR override both, for
tests and labs; libcni passes the runtime's environment through to plugins.
"""
import contextvars
import json
import os

# The environment of the request being served: os.environ in a plugin
# process, the caller's environment in the agent (one context per thread).
request_environ: contextvars.ContextVar = contextvars.ContextVar("request_environ")


def _env() -> dict:
    return request_environ.get(os.environ)


def state_dir() -> str:
    return _env().get("PYCNI_STATE_DIR", "/var/lib/pycni")


def run_dir() -> str:
    return _env().get("PYCNI_RUN_DIR", "/run/pycni")


def write_atomic(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RecordStore:
    """One JSON record per (network, container, interface) attachment."""

    def __init__(self, kind: str, network: str):
        self.dir = os.path.join(state_dir(), kind, network)

    def _path(self, container_id: str, ifname: str) -> str:
        return os.path.join(self.dir, f"{container_id}-{ifname}.json")

    def load(self, container_id: str, ifname: str) -> dict | None:
        try:
            with open(self._path(container_id, ifname), "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
        except ValueError:
            return None  # a torn record is as good as none; DEL falls back

    def save(self, container_id: str, ifname: str, record: dict) -> None:
        write_atomic(self._path(container_id, ifname), json.dumps(record).encode())

    def remove(self, container_id: str, ifname: str) -> None:
        try:
            os.unlink(self._path(container_id, ifname))
        except FileNotFoundError:
            pass

    def collect(self, config: dict, undo=None) -> list[dict]:
        """GC: undo (when given) and forget every recorded attachment that the
        config's cni.dev/valid-attachments does not list.  Returns them."""
        valid = {(a.get("containerID"), a.get("ifname"))
                 for a in config.get("cni.dev/valid-attachments") or [] if isinstance(a, dict)}
        stale = [r for r in self.all() if (r.get("containerID"), r.get("ifname")) not in valid]
        for record in stale:
            if undo is not None:
                undo(record)
            self.remove(record.get("containerID"), record.get("ifname"))
        return stale

    def all(self) -> list[dict]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        records = []
        for name in sorted(names):
            if name.endswith(".json"):
                try:
                    with open(os.path.join(self.dir, name), "rb") as f:
                        records.append(json.loads(f.read()))
                except (OSError, ValueError):
                    continue
        return records
