"""``python -m hwl.servers.pci``: the PCI bus server."""

import sys

from hwl.servers.pci.main import main

raise SystemExit(main(sys.argv[1:]))
