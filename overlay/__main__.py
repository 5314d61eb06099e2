"""python -m overlay --config FILE [flags]: one node's overlay controller in
the foreground.  Flags override the file's keys (see overlay/config.py).
SIGTERM or SIGINT: leave the cluster cleanly (release the lease, remove the
device, routes and firewall table) unless --keep-on-exit, which leaves
both in place for a restart."""
import argparse
import logging
import signal
import sys

from . import flags
from .config import ConfigError, load
from .controller import OverlayController
from .store import StoreError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m overlay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML or JSON settings file")
    flags.add_arguments(parser)
    parser.add_argument("--keep-on-exit", action="store_true",
                        help="on SIGTERM/SIGINT keep the lease and dataplane (restart, upgrade)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.verbose:
        logging.getLogger("overlay").setLevel(logging.DEBUG)
    keep = args.keep_on_exit
    try:
        controller = OverlayController(load(args.config, flags.overrides(vars(args))))
    except (ConfigError, StoreError, OSError, ValueError) as e:
        print(f"overlay: {e}", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: controller.stop(leave=not keep))
    controller.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
