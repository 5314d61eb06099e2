"""What the kernel clients raise.

Every failure is an OSError carrying the kernel's errno where it gave one,
so code that only cares about "an I/O operation failed" catches OSError.
None of them knows CNI error codes: the plugins decide what a failure
means to a runtime (cni_plugins.core.errors.kernel_failure and skel).
"""


class KernelError(OSError):
    """The kernel refused an operation or lacks an object we asked for."""


class NetlinkError(KernelError):
    """A netlink request answered with an error (errno, extended-ack text)."""


class NftError(KernelError):
    """libnftables refused a transaction; ``details`` holds its error text."""

    def __init__(self, msg: str, details: str = ""):
        super().__init__(msg)
        self.details = details


class NetnsError(KernelError):
    """A path that cannot be used as a network namespace: missing (errno
    ENOENT), unreadable, not a namespace, or the caller's own."""


class HostNetnsError(NetnsError):
    """The path is the caller's own network namespace."""
