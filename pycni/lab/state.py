"""A lab's state: its plan as far as it has been made, in ``state.json`` in
the lab dir.  An entry is recorded before the thing it names is made, so
`down` knows everything there may be to remove, even after a failed up."""
from __future__ import annotations

import json
import os

from cni_plugins.core.records import write_atomic

from .spec import NAME_RE, LabError, lab_root, load_file


def state_path(lab_dir: str) -> str:
    return os.path.join(lab_dir, "state.json")


def save_state(state: dict) -> None:
    write_atomic(state_path(state["dir"]), json.dumps(state, indent=2).encode())


def load_state(name: str) -> dict | None:
    try:
        with open(state_path(os.path.join(lab_root(), name))) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise LabError(f"lab {name}: corrupt state file: {e}") from None


def list_labs() -> list[str]:
    try:
        return sorted(n for n in os.listdir(lab_root()) if os.path.isdir(os.path.join(lab_root(), n)))
    except FileNotFoundError:
        return []


def resolve(ref: str | None) -> tuple[str, dict | None]:
    """FILE, NAME or None (the only lab) -> (lab name, plan from file or None)."""
    if ref is None:
        labs = list_labs()
        if len(labs) != 1:
            raise LabError("name the lab (FILE or NAME): " +
                           (f"labs up: {', '.join(labs)}" if labs else "no lab is up"))
        return labs[0], None
    if os.path.isfile(ref):
        plan = load_file(ref)
        return plan["name"], plan
    if not NAME_RE.match(ref):
        raise LabError(f"no lab file or lab named {ref!r}")
    return ref, None


def running_state(name: str) -> dict:
    state = load_state(name)
    if state is None:
        raise LabError(f"lab {name} is not up")
    return state
