"""Atomic JSON files: written to a temporary name, then renamed over the
target, so a reader sees the old content or the new, never a torn file."""
import json
import os
import uuid


def write_json(path: str, data, tmp_dir: str | None = None) -> None:
    """``tmp_dir`` (same filesystem) keeps the temporary file out of a
    directory that is being watched."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(tmp_dir or directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
