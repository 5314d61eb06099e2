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


def running(pid_path: str) -> int | None:
    """The pid of the process ``pid_path`` records, if it still runs."""
    record = read_json(pid_path)
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        return None
    start = _start_time(record["pid"])
    return record["pid"] if start is not None and start == record.get("start") else None


def stop(pid_path: str, sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> bool:
    """Signal the recorded process and wait for it to end (SIGKILL after
    ``timeout``); forget it.  False if it would not die."""
    pid = running(pid_path)
    if pid is not None:
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while running(pid_path) and time.monotonic() < deadline:
            time.sleep(0.05)
        if running(pid_path):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while running(pid_path) and time.monotonic() < deadline:
                time.sleep(0.05)
    gone = running(pid_path) is None
    if gone:
        try:
            os.unlink(pid_path)
        except FileNotFoundError:
            pass
    return gone


def log_tail(log_path: str, lines: int = 15) -> str:
    try:
        with open(log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""
