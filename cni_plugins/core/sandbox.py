"""The container's network namespace as a plugin uses it: opened once per
request, with a netlink handle inside it and a way to enter it (for
sysctls), closed when the request is done.

The one place where "no such netns" becomes a CNI error: ADD says code 4
(invalid CNI_NETNS), CHECK code 3 (unknown container); DEL never needs one.
"""
import os

from ..kernel import netns
from ..kernel.errors import HostNetnsError, NetnsError
from .errors import INVALID_ENV, CNIError


def open_fd(path: str, code: int = INVALID_ENV) -> int:
    """netns.open_netns, with its failures as CNI error ``code`` (the
    caller's own namespace is always an invalid CNI_NETNS)."""
    try:
        return netns.open_netns(path)
    except NetnsError as e:
        raise CNIError(INVALID_ENV if isinstance(e, HostNetnsError) else code, f"CNI_NETNS: {e.strerror}") from None


class Sandbox:
    """``with Sandbox(req.netns, code) as sb:`` sb.nl is a Netlink handle in
    the container, ``with sb.entered():`` runs code inside it, sb.fd is the
    namespace's fd (e.g. to create a veth peer straight into it)."""

    def __init__(self, path: str, code: int = INVALID_ENV):
        self.path = path
        self.fd = open_fd(path, code)
        self._nl = None

    @classmethod
    def if_present(cls, path: str) -> "Sandbox | None":
        """The sandbox, or None when it is gone (DEL's case)."""
        if not path:
            return None
        try:
            return cls(path)
        except CNIError:
            return None

    @property
    def nl(self):
        if self._nl is None:
            self._nl = netns.netlink_in(self.fd)
        return self._nl

    def entered(self):
        return netns.entered(self.fd)

    def close(self) -> None:
        if self._nl is not None:
            self._nl.close()
            self._nl = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
