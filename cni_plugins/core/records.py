"""Our own records of what plugins made, and the atomic file writes.

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
    or the new one, never a torn one.  The data is written into an unnamed
    file (O_TMPFILE) that gets a name only once it is complete: ``path``
    itself when there is none yet, else a temporary renamed over it.  A
    writer killed between those two steps leaves the temporary, which
    names its pid (sweep_temporaries)."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f"{_TMP}{os.getpid()}.{os.urandom(4).hex()}")  # short: path may be 255 long
    fd = _complete_unnamed(directory, data, mode)
    try:
        if fd is None:  # a filesystem without O_TMPFILE: a named temporary
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            _write_all(fd, data)
        else:
            try:
                _name_unnamed(fd, path)
                return  # a new file: named at once, no temporary
            except FileExistsError:
                _name_unnamed(fd, tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    finally:
        if fd is not None:
            os.close(fd)


def create_atomic(path: str, data: bytes, mode: int = 0o644) -> bool:
    """Create ``path`` holding ``data``, or return False when it exists.
    The file appears complete or not at all, also when the writer is killed
    half-way (an empty reservation would name no owner that could release
    it)."""
    fd = _complete_unnamed(os.path.dirname(path) or ".", data, mode)
    if fd is None:  # a filesystem without O_TMPFILE: create, then fill
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:
            return False
        try:
            _write_all(fd, data)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return True
    try:
        _name_unnamed(fd, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _complete_unnamed(directory: str, data: bytes, mode: int) -> int | None:
    """An fd of an unnamed file in ``directory`` holding ``data``, synced;
    None where the filesystem has no O_TMPFILE."""
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, mode)
    except OSError:
        return None
    try:
        _write_all(fd, data)
    except BaseException:
        os.close(fd)
        raise
    return fd


_TMP = ".tmp"


def sweep_temporaries(directory: str) -> None:
    """Remove the temporaries of writers that died between naming and
    renaming (write_atomic): those whose pid no longer runs."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        pid = name[len(_TMP):].split(".", 1)[0] if name.startswith(_TMP) else ""
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            try:
                os.unlink(os.path.join(directory, name))
            except FileNotFoundError:
                pass


def _name_unnamed(fd: int, path: str) -> None:
    """linkat(..., AT_SYMLINK_FOLLOW) of /proc/self/fd/N: Python passes
    that flag only when a dir fd is given, plain link() would try to link
    the /proc symlink itself."""
    root = os.open("/", os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", path, src_dir_fd=root, follow_symlinks=True)
    finally:
        os.close(root)


def record_name(container_id: str, ifname: str) -> str:
    """The file name of an attachment's record: unambiguous for every legal
    pair, since ':' can be in neither (core.names), and hashed when the id
    is too long for a file name (the spec sets no limit on its length)."""
    name = f"{container_id}:{ifname}.json"
    if len(name.encode()) <= 255:
        return name
    import hashlib  # OpenSSL's start-up cost, paid only for such ids

    return hashlib.sha256(f"{container_id}:{ifname}".encode()).hexdigest() + ".json"


def find_record(directory: str, container_id: str, ifname: str) -> str | None:
    """The path of an attachment's record, or None.  Records written before
    names were unambiguous are "<id>-<ifname>.json": such a file counts
    only if it names this very attachment."""
    path = os.path.join(directory, record_name(container_id, ifname))
    if os.path.exists(path):
        return path
    legacy = os.path.join(directory, f"{container_id}-{ifname}.json")
    record = read_json(legacy) if len(os.path.basename(legacy).encode()) <= 255 else None
    if isinstance(record, dict) and (record.get("containerID"), record.get("ifname")) == (container_id, ifname):
        return legacy
    return None


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

    def load(self, container_id: str, ifname: str) -> dict | None:
        """The record, or None (a torn record is as good as none: DEL falls back)."""
        path = find_record(self.dir, container_id, ifname)
        return read_json(path) if path else None

    def save(self, container_id: str, ifname: str, record: dict) -> None:
        write_atomic(os.path.join(self.dir, record_name(container_id, ifname)), json.dumps(record).encode())

    def remove(self, container_id: str, ifname: str) -> None:
        """Forget the attachment's record (in either name format), and what
        writers killed half-way left in the directory."""
        sweep_temporaries(self.dir)
        while True:
            path = find_record(self.dir, container_id, ifname)
            if path is None:
                return
            try:
                os.unlink(path)
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
