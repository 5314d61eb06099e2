"""The plugin's side of the resolver: start it as a detached daemon, tell
it to reload, ask whether it runs, and (for labs) stop leftover ones."""
import os
import signal
import sys

from ..core.errors import CNIError, IO_FAILURE
from .layout import resolver_files, resolver_pid_files

START_TIMEOUT = 10.0
CONTROL_TIMEOUT = 10.0


def control(sock_path: str, command: bytes = b"reload", timeout: float = CONTROL_TIMEOUT) -> str | None:
    """Send one command; None when no resolver listens there."""
    import _socket

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        try:
            s.connect(sock_path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        s.sendall(command + b"\n")
        chunks = []
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace").strip()
    except OSError as e:
        raise CNIError(IO_FAILURE, f"dnsname: resolver control socket {sock_path}: {e}") from None
    finally:
        s.close()


def _package_root() -> str:
    """The directory holding the cni_plugins package (the resolver runs with -IS)."""
    import cni_plugins

    return os.path.dirname(os.path.dirname(os.path.abspath(cni_plugins.__file__)))


def start_resolver(base: str, ino: int) -> None:
    """Start the resolver as a detached daemon (new session, stdio to its
    log) with this interpreter, and wait until it serves.  Caller holds the lock."""
    import select

    files = resolver_files(base, ino)
    boot = (f"import sys; sys.path[:0] = {[_package_root()]!r}; "
            "from cni_plugins.dnsname.server import main; main()")
    rfd, wfd = os.pipe()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        pid = os.posix_spawn(
            sys.executable, [sys.executable, "-IS", "-c", boot, "--daemon", "--base", base, "--netns", str(ino)],
            env, setsid=True,
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                          (os.POSIX_SPAWN_DUP2, wfd, 1),
                          (os.POSIX_SPAWN_OPEN, 2, files["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)])
    except OSError as e:
        os.close(rfd)
        os.close(wfd)
        raise CNIError(IO_FAILURE, f"dnsname: cannot start the resolver: {e}") from None
    os.close(wfd)
    try:
        os.waitpid(pid, 0)  # the resolver forks once more; its first process exits at once
        got = b""
        ready, _, _ = select.select([rfd], [], [], START_TIMEOUT)
        while ready:
            chunk = os.read(rfd, 4096)
            if not chunk:
                break
            got += chunk
            if b"\n" in got:
                break
            ready, _, _ = select.select([rfd], [], [], START_TIMEOUT)
    finally:
        os.close(rfd)
    if not got.startswith(b"ready"):
        detail = got.decode(errors="replace").strip() or f"no answer; see {files['log']}"
        raise CNIError(IO_FAILURE, f"dnsname: the resolver did not start: {detail}")


def notify(base: str, ino: int, start: bool) -> str:
    """Make the resolver of this netns load the current records (starting
    it if ``start`` and none runs).  Caller holds the lock."""
    files = resolver_files(base, ino)
    answer = control(files["sock"])
    if answer is None:
        if not start:
            return "none"
        start_resolver(base, ino)
        answer = control(files["sock"])
    if answer is None:
        raise CNIError(IO_FAILURE, "dnsname: the resolver went away")
    if answer.startswith("error"):
        raise CNIError(IO_FAILURE, f"dnsname: resolver: {answer}")
    return answer


def stop_resolvers(run_dir: str) -> None:
    """SIGTERM every resolver serving records under ``run_dir`` (normally
    the last DEL has stopped them already)."""
    for path in resolver_pid_files(run_dir):
        try:
            with open(path) as f:
                os.kill(int(f.read().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
