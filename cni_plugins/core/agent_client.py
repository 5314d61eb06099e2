"""Hand a plugin request to the node agent, if one serves this node.

This is the first thing a plugin executable runs, so it uses only modules
the interpreter has loaded at start-up or that are built in: `_socket` and
`posix` rather than `socket` and `os` (importing `socket` alone costs more
than a Go plugin's whole start-up).  The agent listens on an abstract unix
socket: those are scoped to a network namespace, so a plugin run inside a
lab host's netns never reaches another host's agent.

The exchange decides once who does the work:

1. the caller sends the request (environment and stdin);
2. the agent answers ACK when it will serve it (it stays silent or closes
   when it will not: another caller's view of the files, an unknown type);
3. the caller confirms with GO and from then on waits for the answer.

No ACK within ACK_TIMEOUT, or a closed connection before it: the caller
does the work itself and never sends GO, so the agent, which starts only
on GO, drops the request.  After GO, a lost agent is a CNI error (code 11,
try again later: the work may be partly done, and the runtime's DEL undoes
it), never silence.
"""
import _socket
import posix
import sys

DEFAULT_NAME = "pycni-agent"  # abstract: "\0pycni-agent"
ACK = b"A"
GO = b"G"
ACK_TIMEOUT = 1.0
ANSWER_TIMEOUT = 600.0
TRY_AGAIN_LATER = 11


def address(name: str | None = None) -> str:
    return "\0" + (name or DEFAULT_NAME)


def send_frame(sock, payload: bytes) -> None:
    sock.sendall(len(payload).to_bytes(4, "big") + payload)


def recv_exact(sock, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("peer closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock) -> bytes:
    return recv_exact(sock, int.from_bytes(recv_exact(sock, 4), "big"))


def encode_request(plugin: str, environ: dict[bytes, bytes], stdin: bytes) -> bytes:
    """plugin NUL KEY=VALUE NUL ... NUL NUL stdin (environment as bytes)."""
    env = b"\0".join(k + b"=" + v for k, v in environ.items())
    return plugin.encode() + b"\0" + env + b"\0\0" + stdin


def decode_request(payload: bytes) -> tuple[str, dict[str, str], bytes]:
    plugin, _, rest = payload.partition(b"\0")
    env_blob, _, stdin = rest.partition(b"\0\0")
    env = {}
    for item in env_blob.split(b"\0") if env_blob else []:
        key, _, value = item.partition(b"=")
        env[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return plugin.decode(), env, stdin


def delegate(plugin: str) -> None:
    """Serve this process's request through the agent and exit, or return
    so the caller does the work itself."""
    env = posix.environ
    if b"PYCNI_NO_AGENT" in env:
        return
    name = env.get(b"PYCNI_AGENT_SOCKET", DEFAULT_NAME.encode())
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        sock.connect(b"\0" + name)
    except OSError:
        return  # no agent on this node (or in this netns)
    stdin = b"" if env.get(b"CNI_COMMAND") == b"VERSION" and sys.stdin.isatty() else sys.stdin.buffer.read()
    try:
        sock.settimeout(ACK_TIMEOUT)
        send_frame(sock, encode_request(plugin, env, stdin))
        if sock.recv(1) != ACK:
            raise ConnectionError("agent refused the request")
        sock.sendall(GO)
    except OSError:
        sock.close()
        _run_locally(plugin, stdin)  # exits
    try:
        sock.settimeout(ANSWER_TIMEOUT)
        answer = recv_frame(sock)
    except OSError as e:
        _agent_lost(stdin, e)  # exits
    sys.stdout.buffer.write(answer[1:])
    sys.stdout.flush()
    posix._exit(answer[0])


def _run_locally(plugin: str, stdin: bytes) -> None:
    from .registry import load
    from .skel import main

    main(load(plugin), stdin)


def _agent_lost(stdin: bytes, e: Exception) -> None:
    """The agent took the request and went away before answering."""
    import json

    from .errors import CNIError
    from .skel import render
    from .version import SUPPORTED

    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, RecursionError):
        version = None
    error = CNIError(TRY_AGAIN_LATER, "the node agent went away while serving this request; "
                     "it may be partly done (DEL undoes it)", f"{type(e).__name__}: {e}")
    sys.stdout.buffer.write(render(error.to_json(version if version in SUPPORTED else "1.1.0")))
    sys.stdout.flush()
    posix._exit(1)
