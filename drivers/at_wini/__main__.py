import sys

from hwl.drivers.at_wini.main import main

sys.exit(main(sys.argv[1:]))
