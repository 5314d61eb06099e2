"""What every plugin run must give a runtime, whatever its input: JSON on
stdout (a well-formed result in the requested version, the spec's error
object, or nothing for DEL/CHECK/GC/STATUS), an error code of the spec's
or one of ours (999, "a bug", never), and no traceback."""
import json

from conformance.schema import validate_error, validate_result, validate_version_output, version_shape

SPEC_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51}
OUR_CODES = {100, 101, 102, 103, 104}


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")


def output_problems(rc: int, stdout: bytes, stderr: str, command, version: str | None,
                    undecodable: bool = False) -> list[str]:
    """What is wrong with one run; ``undecodable``: stdin was not JSON a
    strict decoder takes, so the code must be 6 (decode failure)."""
    problems = []
    if "Traceback" in stderr:
        problems.append(f"traceback on stderr: {stderr[-2000:]}")
    if rc < 0:
        return problems + [f"killed by signal {-rc}"]
    try:
        text = stdout.decode("utf-8")
        doc = json.loads(text, parse_constant=_no_constant) if text.strip() else None
    except ValueError:
        return problems + [f"stdout is not JSON: {stdout[:300]!r}"]
    if rc == 0:
        if command == "ADD":
            problems += validate_result(doc, version) + version_shape(doc, version)
        elif command == "VERSION":
            problems += validate_version_output(doc)
        elif doc is not None:
            problems.append(f"{command} succeeded but printed {text[:300]!r}")
        return problems
    problems += validate_error(doc)
    code = doc.get("code") if isinstance(doc, dict) else None
    if code not in SPEC_CODES | OUR_CODES:
        problems.append(f"error code {code!r} is neither the spec's nor ours: {text[:500]}")
    elif undecodable and command in ("ADD", "DEL", "CHECK", "GC", "STATUS") and code != 6:
        problems.append(f"stdin cannot be decoded, but the code is {code}, not 6: {text[:300]}")
    return problems
