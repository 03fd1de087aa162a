"""``python -m servers.pci``: the PCI bus server."""

import sys

from servers.pci.main import main

raise SystemExit(main(sys.argv[1:]))
