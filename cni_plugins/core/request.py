"""The CNI execution protocol's input: environment variables plus stdin config.

A Request carries everything a plugin may look at: the command, config,
identifiers, CNI_ARGS, the caller's whole environment (an IPAM plugin
delegated to by exec inherits it) and the state directories it selects.
Nothing is read from the process environment behind the request's back,
so the agent serves many callers at once, each with its own.
"""
import json
import os

from . import names, version
from .plain import plain
from .errors import CNIError, DECODE_FAILURE, INCOMPATIBLE_VERSION, INVALID_CONFIG, INVALID_ENV

DEFAULT_STATE_DIR = "/var/lib/pycni"   # persistent records (PYCNI_STATE_DIR)
DEFAULT_RUN_DIR = "/run/pycni"         # volatile state (PYCNI_RUN_DIR)

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
# Which variables each command needs (spec section "Parameters").
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}
# Minimum config version for commands added after 0.3.0.
_SINCE = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0"}


@plain
class Request:
    command: str
    config: dict
    cni_version: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: list[str] = []
    args: dict[str, str] = {}
    raw_config: bytes = b""
    environ: dict[str, str] = {}
    state_dir: str = DEFAULT_STATE_DIR
    run_dir: str = DEFAULT_RUN_DIR

    @property
    def network(self) -> str:
        return self.config["name"]

    @property
    def runtime_config(self) -> dict:
        """The capability arguments the runtime passed (an object, or {})."""
        return _object_or_empty(self.config, "runtimeConfig")

    @property
    def args_cni(self) -> dict:
        """The config's ``args.cni`` (an object, or {})."""
        return _object_or_empty(_object_or_empty(self.config, "args"), "cni", "args.")

    def require_prev_result(self, plugin: str) -> dict:
        """The prevResult a chained plugin cannot work without."""
        prev = self.prev_result
        if prev is None:
            raise CNIError(INVALID_CONFIG, f"{plugin}: {self.command} needs prevResult: chain {plugin} "
                           "after an interface plugin")
        return prev

    @property
    def prev_result(self) -> dict | None:
        prev = self.config.get("prevResult")
        if prev is None:
            return None
        return version.result_to_internal(prev)


def _object_or_empty(obj: dict, key: str, where: str = "") -> dict:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CNIError(INVALID_CONFIG, f"{where}{key} must be an object, got {type(value).__name__}")
    return value


def parse_cni_args(raw: str) -> dict[str, str]:
    try:
        return dict(names.parse_cni_args(raw))
    except ValueError as e:
        raise CNIError(INVALID_ENV, str(e)) from None


def _not_json(constant: str):
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0:  # inf (NaN never gets here: parse_constant)
        raise ValueError(f"number {text} is out of range")
    return value


def _as_text(value, where: str = ""):
    """The decoded config as Go's decoder leaves it: a lone surrogate (an
    escape such as \\ud800, no Unicode character) becomes U+FFFD.  Only
    escapes make them, so only a config with escapes is walked.  Returns
    (value, the path of a string holding NUL or None): NUL is JSON, but no
    name, path or address can hold it."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return value, (where or "a string") if "\0" in value else None
    if isinstance(value, list):
        items = [_as_text(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return [v for v, _ in items], next((p for _, p in items if p), None)
    if isinstance(value, dict):
        out, nul = {}, None
        for k, v in value.items():
            key, bad_key = _as_text(k, f"{where}.{k!r}" if where else repr(k))
            out[key], bad = _as_text(v, f"{where}.{key}" if where else key)
            nul = nul or bad_key or bad
        return out, nul
    return value, None


def parse_config(raw: bytes) -> dict:
    """Strict JSON: no NaN or Infinity, nor a number too large for a double
    (1e999: Go's decoder refuses it, Python's makes it Infinity, and
    whatever we print must be JSON again), strings as Go decodes them
    (_as_text); nesting too deep to decode is a decode failure too."""
    try:
        config = json.loads(raw or b"null", parse_constant=_not_json, parse_float=_finite)
        config, nul = _as_text(config) if b"\\u" in raw else (config, None)
    except RecursionError:
        raise CNIError(DECODE_FAILURE, "cannot decode network config: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CNIError(DECODE_FAILURE, f"cannot decode network config: {e}") from None
    if not isinstance(config, dict):  # first: whatever it holds, it is no config (Go cannot decode it)
        raise CNIError(DECODE_FAILURE, "network config must be a JSON object")
    if nul:
        raise CNIError(INVALID_CONFIG, f"network config: {nul} holds NUL")
    return config


def from_environment(environ=os.environ, stdin: bytes = b"") -> Request:
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CNIError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    if command == "VERSION":
        try:
            config = parse_config(stdin) if stdin.strip() else {}
        except CNIError:
            config = {}
        return Request(command, config, str(config.get("cniVersion") or "1.1.0"))

    config = parse_config(stdin)
    cni_version = config.get("cniVersion")
    if not isinstance(cni_version, str):
        raise CNIError(INVALID_CONFIG, "network config lacks cniVersion")
    version.require_supported(cni_version)
    since = _SINCE.get(command)
    if since and not version.at_least(cni_version, since):
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"config version {cni_version} does not allow {command} (needs {since} or later)",
        )
    for key in ("name", "type"):
        if not isinstance(config.get(key), str) or not config[key]:
            raise CNIError(INVALID_CONFIG, f"network config lacks {key!r}")
    problem = names.network_name_problem(config["name"])
    if problem:  # it names directories of ours: refused as libcni refuses it
        raise CNIError(INVALID_CONFIG, problem)
    missing = [v for v in _REQUIRED[command] if not environ.get(v)]
    if missing:
        raise CNIError(INVALID_ENV, f"required environment variables missing: {', '.join(missing)}")

    req = Request(
        command=command,
        config=config,
        cni_version=cni_version,
        container_id=environ.get("CNI_CONTAINERID", ""),
        netns=environ.get("CNI_NETNS", ""),
        ifname=environ.get("CNI_IFNAME", ""),
        path=[p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p],
        args=parse_cni_args(environ.get("CNI_ARGS", "")),
        raw_config=stdin,
        environ=dict(environ),
        state_dir=environ.get("PYCNI_STATE_DIR") or DEFAULT_STATE_DIR,
        run_dir=environ.get("PYCNI_RUN_DIR") or DEFAULT_RUN_DIR,
    )
    if command in ("ADD", "CHECK", "DEL"):
        if names.container_id_problem(req.container_id):
            raise CNIError(INVALID_ENV, f"invalid CNI_CONTAINERID {req.container_id!r}")
        problem = names.ifname_problem(req.ifname)
        if problem:
            raise CNIError(INVALID_ENV, f"CNI_IFNAME: {problem}")
    return req
