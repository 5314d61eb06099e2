"""CNI error codes and the exception that carries them to the entry point."""

# Codes reserved by the CNI specification (section "Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_READY = 50          # STATUS: plugin cannot serve ADDs now
LIMITED_CONNECTIVITY = 51

# Our own codes (the spec leaves 100 and up to plugins).
IPAM_EXHAUSTED = 100    # no free address left in the configured ranges
IPAM_CONFLICT = 101     # a requested address is taken or out of range
LINK_EXISTS = 102       # the container interface name is already in use
KERNEL_FAILURE = 103    # netlink or nftables refused an operation
CHECK_FAILED = 104      # CHECK found the kernel differing from prevResult

OUR_CODES = {
    IPAM_EXHAUSTED: "no free address in the configured ranges",
    IPAM_CONFLICT: "requested address unavailable",
    LINK_EXISTS: "interface already exists in the container",
    KERNEL_FAILURE: "the kernel refused an operation",
    CHECK_FAILED: "container state differs from the expected result",
}


class CNIError(Exception):
    """An error to report to the runtime as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict:
        out = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def kernel_failure(plugin: str, what: str, e: Exception) -> CNIError:
    """A kernel refusal (netlink, nftables) while doing ``what``: code 103."""
    return CNIError(KERNEL_FAILURE, f"{plugin}: {what}: {e}")


def require_same(plugin: str, differences: list[str]) -> None:
    """CHECK's verdict: the first difference between plan and kernel, as code 104."""
    if differences:
        raise CNIError(CHECK_FAILED, f"{plugin}: {differences[0]}")
