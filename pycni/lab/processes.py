"""The lab's long-running processes (agents, etcd members): started
detached, each known by a pid file holding its pid and start time, so a
later `pycni lab` (apply, down) signals exactly the process it started and
never a stranger that reused the pid."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from cni_plugins.core.records import read_json, write_atomic

STOP_TIMEOUT = 15.0


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot); None when it is
    gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def spawn(cmd: list[str], log_path: str, pid_path: str, netns: str | None = None, env: dict | None = None) -> int:
    """Start ``cmd`` (inside network namespace ``netns``, as `ip netns
    exec` runs it; ``env`` added to ours) in a session of its own, its
    output appended to ``log_path``; record it in ``pid_path``."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    full = ["ip", "netns", "exec", netns, *cmd] if netns else cmd
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd="/", env={**os.environ, **(env or {})})
    write_atomic(pid_path, json.dumps({"pid": proc.pid, "start": _start_time(proc.pid)}).encode())
    return proc.pid


def _record(pid_path: str) -> tuple[int, str] | None:
    record = read_json(pid_path)
    if isinstance(record, dict) and isinstance(record.get("pid"), int):
        return record["pid"], record.get("start")
    return None


def alive(pid: int, start: str | None) -> bool:
    """Is ``pid`` still the process that started at ``start``?"""
    now = _start_time(pid)
    return now is not None and now == start


def running(pid_path: str) -> int | None:
    """The pid of the process ``pid_path`` records, if it still runs."""
    record = _record(pid_path)
    return record[0] if record and alive(*record) else None


def terminate(pid: int, start: str, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> bool:
    """Signal a process and wait for it to end (SIGKILL after ``timeout``);
    False if it would not die."""
    for signum, wait in ((sig, timeout), (signal.SIGKILL, 5.0)):
        if not alive(pid, start):
            return True
        os.kill(pid, signum)
        deadline = time.monotonic() + wait
        while alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.05)
    return not alive(pid, start)


def stop(pid_path: str, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the process ``pid_path`` records and forget it; False if it
    would not die."""
    record = _record(pid_path)
    if record and not terminate(*record, sig, timeout):
        return False
    try:
        os.unlink(pid_path)
    except FileNotFoundError:
        pass
    return True


def started_as(pid: int, text: str) -> str | None:
    """The start time of process ``pid`` if its command line holds
    ``text`` (a path only this process was given), else None."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
    except OSError:
        return None
    return _start_time(pid) if text in cmdline else None


def log_tail(log_path: str, lines: int = 15) -> str:
    try:
        with open(log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
