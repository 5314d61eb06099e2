"""`pycni agent` as the tests run it: in the foreground, optionally inside
a namespace (``prefix``, e.g. `ip netns exec HOST` or `nsenter --net=...`),
with its log in a file the tests read."""
import os
import subprocess
import sys
import time

from conftest import stop_process


class RunningAgent:
    """`pycni agent` in the foreground (inside ``prefix``), ready once its
    log says it listens."""

    def __init__(self, name, log_path, prefix=(), args=(), cwd=None):
        self.name = name
        self.log_path = log_path
        self.prefix = tuple(prefix)
        self.args = tuple(args)   # more `pycni agent` flags: its duties
        self.cwd = cwd            # where relative paths in the requests it serves land
        self.start()

    def start(self):
        """Start it (again, after a kill: the log is appended to)."""
        ready = f"listening on @{self.name}"
        before = self.log().count(ready) if os.path.exists(self.log_path) else 0
        pycni = os.path.join(os.path.dirname(sys.executable), "pycni")
        with open(self.log_path, "a") as log:
            self.proc = subprocess.Popen([*self.prefix, pycni, "agent", "--socket", self.name, "--verbose", *self.args],
                                         stderr=log, stdout=subprocess.DEVNULL, cwd=self.cwd)
        deadline = time.time() + 60   # a policy duty first reconciles; the machine may be busy
        while time.time() < deadline and self.proc.poll() is None:
            if self.log().count(ready) > before:
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"agent did not start: {self.log()}")

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def served(self):
        return self.log().count("served ")

    def stop(self):
        stop_process(self.proc, 10)
