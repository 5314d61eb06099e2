"""Running a CNI plugin executable: the one place that builds its
environment, execs it and reads its output.  Used by IPAM delegation, the
runtime side (pycni.libcni), the conformance suite and the tests.

``subprocess`` is imported on first use: a plugin that never delegates by
exec never pays for it.
"""
import errno
import json
import os
import time

CNI_VARIABLES = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")


class Outcome:
    """What one execution gave: exit status, stdout (bytes), stderr (text),
    wall time; ``output`` is stdout decoded as JSON (None when empty or not
    JSON, with ``output_error`` saying why)."""

    __slots__ = ("rc", "stdout", "stderr", "seconds", "output", "output_error")

    def __init__(self, rc: int, stdout: bytes, stderr: str, seconds: float):
        self.rc, self.stdout, self.stderr, self.seconds = rc, stdout, stderr, seconds
        self.output, self.output_error = None, ""
        if stdout.strip():
            try:
                self.output = json.loads(stdout)
            except ValueError as e:
                self.output_error = str(e)

    def error_object(self) -> dict | None:
        """The spec's error object the plugin printed, if it printed one."""
        out = self.output
        return out if isinstance(out, dict) and "code" in out else None


def find(path: list[str], plugin_type: str) -> str | None:
    """The first executable named ``plugin_type`` in the CNI_PATH dirs."""
    for directory in path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


def cni_environ(base: dict, command: str, *, container_id: str = "", netns: str = "", ifname: str = "",
                args: str = "", path: list[str] | str = "") -> dict:
    """``base`` without any CNI_* variable it had, plus this request's."""
    env = {k: v for k, v in base.items() if k not in CNI_VARIABLES}
    env["CNI_COMMAND"] = command
    for key, value in (("CNI_CONTAINERID", container_id), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname),
                       ("CNI_ARGS", args), ("CNI_PATH", path if isinstance(path, str) else os.pathsep.join(path))):
        if value:
            env[key] = value
    return env


def run(argv: list[str], env: dict, stdin: bytes, *, timeout: float | None = None, preexec_fn=None,
        cwd: str | None = None, busy_retries: int = 5) -> Outcome:
    """Exec ``argv`` with exactly ``env`` and ``stdin``.  An executable being
    written right now (ETXTBSY: `pycni install` replacing it) is retried
    once a second.  Raises OSError when it cannot be executed and
    subprocess.TimeoutExpired after ``timeout``."""
    import subprocess

    for attempt in range(busy_retries + 1):
        started = time.monotonic()
        try:
            proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=timeout,
                                  preexec_fn=preexec_fn, cwd=cwd)
        except OSError as e:
            if e.errno == errno.ETXTBSY and attempt < busy_retries:
                time.sleep(1)
                continue
            raise
        return Outcome(proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"),
                       time.monotonic() - started)
    raise AssertionError("unreachable")
