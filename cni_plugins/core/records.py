"""Our own records of what plugins made, and the one atomic file write.

Persistent records (what an attachment made, so DEL and GC can undo it from
our own data) live under the request's state dir (/var/lib/pycni unless
PYCNI_STATE_DIR says otherwise); volatile ones (sockets, pid files, the
dnsname zone) under its run dir (/run/pycni, PYCNI_RUN_DIR).  The request
carries both (core.request), so an agent serving many callers keeps them
apart.
"""
import json
import os


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` all at once: readers see the old file
    or the new one, never a torn one, and no temporary file is left behind
    even when the write fails half-way."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.{id(data):x}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_json(path: str):
    """A JSON file's content; None when it is missing or torn."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


class RecordStore:
    """One JSON record per (network, container, interface) attachment of
    one plugin kind, under ``<state dir>/<kind>/<network>/``."""

    def __init__(self, state_dir: str, kind: str, network: str):
        self.dir = os.path.join(state_dir, kind, network)

    def _path(self, container_id: str, ifname: str) -> str:
        return os.path.join(self.dir, f"{container_id}-{ifname}.json")

    def load(self, container_id: str, ifname: str) -> dict | None:
        """The record, or None (a torn record is as good as none: DEL falls back)."""
        return read_json(self._path(container_id, ifname))

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
                record = read_json(os.path.join(self.dir, name))
                if isinstance(record, dict):
                    records.append(record)
        return records
