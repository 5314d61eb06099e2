"""host-local configuration and the round-robin order of candidate addresses (standard library only).

Follows the reference plugin (containernetworking/plugins, host-local
allocator): a config holds one or more *range sets*, each a list of
non-overlapping ranges of one address family; every range set yields one
address per attachment.  Selection is round-robin: continue after the
address last handed out from the set, walk the ranges in order, wrap, and
skip each range's gateway.
"""
import ipaddress

from cni_plugins.core.errors import CNIError, INVALID_CONFIG
from cni_plugins.core.plain import plain

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


def _config_error(msg: str) -> CNIError:
    return CNIError(INVALID_CONFIG, msg)


def parse_ip(value, what: str = "IP"):
    """An address from 'a.b.c.d', 'a.b.c.d/nn' or IPv6 forms.  IPv4-mapped
    IPv6 addresses become IPv4, as Go's To4() canonicalisation does."""
    if not isinstance(value, str) or not value:
        raise _config_error(f"invalid {what} {value!r}")
    text = value.strip().split("/", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise _config_error(f"invalid {what} {value!r}") from None
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr


class Range:
    """One range: subnet, inclusive [start, end], gateway (never handed out)."""

    def __init__(self, spec: dict):
        if not isinstance(spec, dict):
            raise _config_error(f"range must be an object, not {spec!r}")
        subnet = spec.get("subnet")
        if not isinstance(subnet, str) or "/" not in subnet:
            raise _config_error(f"invalid subnet {subnet!r}")
        try:
            iface = ipaddress.ip_interface(subnet.strip())
        except ValueError:
            raise _config_error(f"invalid subnet {subnet!r}") from None
        net = iface.network
        if iface.ip != net.network_address:
            raise _config_error(
                f"Network has host bits set. For a subnet mask of length {net.prefixlen} "
                f"the network address is {net.network_address}"
            )
        if net.prefixlen > net.max_prefixlen - 2:
            raise _config_error(f"Network {net} too small to allocate from")
        self.subnet = net
        first = net.network_address + 1
        self.gateway = self._inside(spec, "gateway", first, check=False)
        last = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address
        # Bounds checked as the reference does: rangeStart against the
        # subnet, then rangeEnd against the subnet and rangeStart.
        self.start, self.end = first, last
        self.start = self._inside(spec, "rangeStart", first)
        self.end = self._inside(spec, "rangeEnd", last)

    def _inside(self, spec, key, default, check=True):
        value = spec.get(key)
        if value in (None, ""):
            return default
        addr = parse_ip(value, key)
        if check and not self.contains(addr):
            raise _config_error(f"{key[0].upper()}{key[1:]} {addr} not in network {self.subnet}")
        if not check and addr.version != self.subnet.version:
            raise _config_error(f"{key} {addr} is not in the family of {self.subnet}")
        return addr

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, addr) -> bool:
        return (
            addr.version == self.subnet.version
            and addr in self.subnet
            and self.start <= addr <= self.end
        )

    def overlaps(self, other: "Range") -> bool:
        return self.version == other.version and (
            self.contains(other.start) or self.contains(other.end)
            or other.contains(self.start) or other.contains(self.end)
        )

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


class RangeSet:
    """The ranges one address per attachment is drawn from."""

    def __init__(self, specs, index: int):
        if not isinstance(specs, list) or not specs:
            raise _config_error(f"invalid range set {index}: empty range set")
        try:
            self.ranges = [Range(s) for s in specs]
        except CNIError as e:
            raise _config_error(f"invalid range set {index}: {e.msg}") from None
        if len({r.version for r in self.ranges}) > 1:
            raise _config_error(f"invalid range set {index}: mixed address families")
        for i, r1 in enumerate(self.ranges):
            for r2 in self.ranges[i + 1:]:
                if r1.overlaps(r2):
                    raise _config_error(
                        f"invalid range set {index}: subnets {r1} and {r2} overlap"
                    )
        self.index = index

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def range_for(self, addr) -> Range | None:
        for r in self.ranges:
            if r.contains(addr):
                return r
        return None

    def overlaps(self, other: "RangeSet") -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def candidates(self, last=None):
        """Yield (address, range) in reference round-robin order: after
        ``last`` (if it lies in the set) through every range, wrapping
        around, ending with ``last`` itself; gateways are skipped."""
        rng = self.range_for(last) if last is not None else None
        if rng is None:
            i, first = 0, self.ranges[0].start
        else:
            i = self.ranges.index(rng)
            first = last + 1 if last < rng.end else None
        n = len(self.ranges)
        # The range we start in is visited twice: from `first` to its end
        # now, and from its start up to `first - 1` after wrapping.
        for step in range(n + 1):
            r = self.ranges[(i + step) % n]
            lo = r.start
            hi = r.end
            if step == 0:
                if first is None:
                    continue
                lo = first
            elif step == n:
                if first is None:  # `last` was the end of its range
                    pass
                elif first == r.start:
                    break
                else:
                    hi = first - 1
            addr = lo
            while addr <= hi:
                if addr != r.gateway:
                    yield addr, r
                addr += 1

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)


@plain
class IPAMConfig:
    """The parsed ``ipam`` section plus the requested addresses."""
    name: str
    data_dir: str
    range_sets: list[RangeSet]
    routes: list[dict]
    resolv_conf: str
    requested: list


def check_network_name(name) -> str:
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\0" in name:
        raise _config_error(f"invalid network name {name!r}")
    return name


def data_dir_of(config: dict) -> str:
    ipam = config.get("ipam")
    if not isinstance(ipam, dict):
        raise _config_error("IPAM config missing 'ipam' key")
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str):
        raise _config_error(f"invalid dataDir {data_dir!r}")
    return data_dir


def _requested_ips(req) -> list:
    raw = []
    if req.args.get("IP"):
        raw += [p.strip() for p in req.args["IP"].split(",")]
    for source in (req.args_cni.get("ips"), req.config["ipam"].get("ips"), req.runtime_config.get("ips")):
        if source is None:
            continue
        if not isinstance(source, list):
            raise _config_error(f"requested ips must be a list, not {source!r}")
        raw += source
    out = []
    for value in raw:
        addr = parse_ip(value, "requested IP")
        if addr not in out:
            out.append(addr)
    return out


# route attributes of 1.1.0 and the largest value the kernel holds for each
_ROUTE_NUMBERS = {"mtu": 65535, "advmss": 65535, "priority": 0xFFFFFFFF, "table": 0xFFFFFFFF, "scope": 255}


def _routes(ipam: dict) -> list[dict]:
    routes = ipam.get("routes") or []
    if not isinstance(routes, list):
        raise _config_error("routes must be a list")
    for route in routes:
        if not isinstance(route, dict) or not isinstance(route.get("dst"), str):
            raise _config_error(f"invalid route {route!r}")
        try:
            ipaddress.ip_network(route["dst"], strict=False)
        except ValueError:
            raise _config_error(f"invalid route destination {route['dst']!r}") from None
        if route.get("gw") not in (None, ""):
            parse_ip(route["gw"], "route gateway")
        for key, top in _ROUTE_NUMBERS.items():
            value = route.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top):
                raise _config_error(f"route {route['dst']}: {key} must be an integer from 0 to {top}, got {value!r}")
    return [dict(r) for r in routes]


def load(req) -> IPAMConfig:
    """Parse and validate the IPAM part of a request's network config
    (errors: code 7)."""
    config = req.config
    name = check_network_name(config.get("name"))
    data_dir = data_dir_of(config)
    ipam = config["ipam"]
    specs = []
    # Order as the reference: runtime ipRanges, legacy single range, ranges.
    runtime_ranges = req.runtime_config.get("ipRanges")
    if runtime_ranges:
        if not isinstance(runtime_ranges, list):
            raise _config_error("runtimeConfig.ipRanges must be a list")
        specs += runtime_ranges
    if ipam.get("subnet"):
        specs.append([{k: ipam.get(k) for k in ("subnet", "rangeStart", "rangeEnd", "gateway")}])
    ranges = ipam.get("ranges") or []
    if not isinstance(ranges, list):
        raise _config_error("ranges must be a list of range sets")
    specs += ranges
    if not specs:
        raise _config_error("no IP ranges specified")
    range_sets = [RangeSet(s, i) for i, s in enumerate(specs)]
    for i, a in enumerate(range_sets):
        for j in range(i + 1, len(range_sets)):
            if a.overlaps(range_sets[j]):
                raise _config_error(f"range set {i} overlaps with {j}")
    resolv_conf = ipam.get("resolvConf") or ""
    if not isinstance(resolv_conf, str):
        raise _config_error(f"invalid resolvConf {resolv_conf!r}")
    return IPAMConfig(name, data_dir, range_sets, _routes(ipam), resolv_conf,
                      _requested_ips(req))


def parse_resolv_conf(path: str) -> dict:
    """nameserver/domain/search/options lines as a CNI ``dns`` object."""
    nameservers, search, options, domain = [], [], [], ""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            fields = line.split()
            if len(fields) < 2:
                continue
            if fields[0] == "nameserver":
                nameservers.append(fields[1])
            elif fields[0] == "domain":
                domain = fields[1]
            elif fields[0] == "search":
                search += fields[1:]
            elif fields[0] == "options":
                options += fields[1:]
    dns = {}
    if nameservers:
        dns["nameservers"] = nameservers
    if domain:
        dns["domain"] = domain
    if search:
        dns["search"] = search
    if options:
        dns["options"] = options
    return dns
