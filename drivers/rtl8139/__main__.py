import sys

from hwl.drivers.rtl8139.main import main

sys.exit(main(sys.argv[1:]))
