"""pycni: CNI plugins in Python.

Everything imported from a plugin executable's start-up path lives in this
package and uses only the standard library; heavier modules (libnftables,
yaml, netaddr) are imported inside the functions that need them.
"""
