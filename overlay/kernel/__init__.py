"""Kernel operations of the overlay, one module per object kind, over
pyroute2 (netlink) and libnftables.  Each takes an open pyroute2 IPRoute
and plain data from `overlay.desired`; none decides anything."""
import errno

from pyroute2 import NetlinkError


def ignoring(*codes: int):
    """Run a netlink call, treating the given errnos as done already."""
    def call(function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except NetlinkError as e:
            if e.code not in codes:
                raise
            return None
    return call


absent_ok = ignoring(errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)
