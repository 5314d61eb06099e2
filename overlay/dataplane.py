"""The overlay's kernel state as a whole: observe what we own, apply a
`Plan`, remove everything.  Kernel calls live in overlay.kernel, one module
per object kind; this module only orders them."""
import logging

from pyroute2 import IPRoute, NetlinkError

from cni_plugins.kernel.errors import NftError

from .desired import DeviceSpec, Underlay
from .diff import Observed, Plan
from .kernel import device, fdb, firewall, neighbour, route, underlay

log = logging.getLogger(__name__)


class DataplaneError(Exception):
    pass


class Dataplane:
    """Use from one thread (the controller's)."""

    def __init__(self, device_name: str, port: int):
        self.device_name = device_name
        self.port = port
        self.ipr = IPRoute()

    def underlay(self, interface: str | None) -> Underlay:
        return underlay.read(self.ipr, interface)

    def _names(self) -> dict[int, str]:
        return {link["index"]: link.get("IFLA_IFNAME") for link in self.ipr.link("dump")}

    def observe(self) -> Observed:
        try:
            return self._observe()
        except (NetlinkError, device.ForeignDevice) as e:
            raise DataplaneError(f"observing the overlay: {e}") from e

    def _observe(self) -> Observed:
        spec, index, up = device.observe(self.ipr, self.device_name)
        routes = route.observe(self.ipr, self._names())
        allowed = firewall.observe(self.port)
        if index is None:
            return Observed(None, routes=routes, allowed=allowed)
        return Observed(spec, up, device.addresses(self.ipr, index), routes,
                        neighbour.observe(self.ipr, index), fdb.observe(self.ipr, index), allowed)

    def apply(self, plan: Plan, observed: Observed) -> None:
        """Removals before additions for routes, neighbours and FDB (in
        that order, the reverse for additions: a route appears only once
        its neighbour and FDB entries are there)."""
        try:
            index = self._device(plan.device, plan.device_spec, observed)
            names = {name: i for i, name in self._names().items()}

            def on(module, item):  # routes name their device; the rest hang on ours
                return names.get(item.device) if module is route else index

            for module, changes in ((route, plan.routes), (neighbour, plan.neighbours), (fdb, plan.fdb)):
                for item in changes.remove:
                    module.remove(self.ipr, item, on(module, item))
            for cidr in plan.addresses.remove:
                device.remove_address(self.ipr, index, cidr)
            for cidr in plan.addresses.add:
                device.add_address(self.ipr, index, cidr)
            for module, changes in ((fdb, plan.fdb), (neighbour, plan.neighbours), (route, plan.routes)):
                for item in changes.add:
                    module.put(self.ipr, item, on(module, item))
        except (NetlinkError, device.ForeignDevice, KeyError) as e:
            raise DataplaneError(f"applying the overlay plan: {e}") from e
        if plan.allowed is not None:
            try:
                firewall.apply(plan.allowed, self.port)
            except NftError as e:
                raise DataplaneError(f"the VXLAN guard: {e}: {e.details}") from e

    def _device(self, action: str | None, spec: DeviceSpec, observed: Observed) -> int:
        if action == "recreate":
            log.info("recreating %s: %s -> %s", spec.name, observed.device, spec)
            device.delete(self.ipr, spec.name)
        if action in ("create", "recreate"):
            return device.create(self.ipr, spec)
        index = device.index_of(self.ipr, spec.name)
        if action == "update":
            device.update(self.ipr, index, spec)
        return index

    def teardown(self) -> None:
        """Everything we made: the device (its addresses, routes,
        neighbour and FDB entries go with it), our routes elsewhere
        (directRouting), the firewall table."""
        try:
            device.delete(self.ipr, self.device_name)
            names = {name: i for i, name in self._names().items()}
            for r in route.observe(self.ipr, self._names()):
                route.remove(self.ipr, r, names.get(r.device))
            firewall.remove()
        except (NetlinkError, NftError) as e:
            raise DataplaneError(f"removing the overlay: {e}") from e

    def close(self) -> None:
        self.ipr.close()
