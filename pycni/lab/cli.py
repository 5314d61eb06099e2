"""`pycni lab up|apply|down|status|exec|probe` (the arguments are cli.py's)."""
from __future__ import annotations

import json
import subprocess
import sys

from .. import libcni
from .reconcile import apply, down, up
from .spec import LabError, load_file
from .state import resolve, running_state
from .status import find_pod, format_status, status_json


def run_cli(args) -> int:
    try:
        return _run_cli(args)
    except (LabError, libcni.LibCNIError) as e:
        print(f"pycni lab: {e}", file=sys.stderr)
        return 1


def _run_cli(args) -> int:
    if args.lab_command in ("up", "apply"):
        plan = load_file(args.file)
        state = up(plan, args.cni_path) if args.lab_command == "up" else apply(plan)
        print(format_status(status_json(state)))
        return 0
    if args.lab_command == "down":
        name, plan = resolve(args.lab)
        problems = down(name, plan)
        if problems:
            print(f"pycni lab: {problems} thing(s) of lab {name} could not be removed", file=sys.stderr)
            return 1
        return 0
    name, _ = resolve(getattr(args, "lab", None))
    state = running_state(name)
    if args.lab_command == "status":
        s = status_json(state)
        print(json.dumps(s, indent=2) if args.json else format_status(s))
        return 0
    if args.lab_command == "probe":
        from . import probe

        report = probe.run(state, probe.parse_targets(args.targets), args.timeout, args.retries)
        print(json.dumps(report, indent=1) if args.json else probe.format_report(report))
        return 0
    if args.lab_command == "exec":
        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            raise LabError("no command given: pycni lab exec POD -- CMD...")
        if args.host:
            host = next((h for h in state["hosts"] if h["name"] == args.target), None)
            if host is None:
                raise LabError(f"lab {name}: no host {args.target!r}")
            netns = host["netns"]
        else:
            netns = find_pod(state, args.target)["netns"]
        sys.stdout.flush()
        try:
            return subprocess.run(["ip", "netns", "exec", netns, *cmd]).returncode
        except KeyboardInterrupt:
            return 130
    raise LabError(f"unknown lab command {args.lab_command!r}")
