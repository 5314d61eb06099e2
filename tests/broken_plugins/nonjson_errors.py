"""bridge that reports errors as plain text instead of the error object.
Caught by: errors.decode, errors.version, errors.env."""
from cni_plugins import bridge
from _base import run

run(bridge, plain_errors=True)
