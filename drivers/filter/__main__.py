import sys

from hwl.drivers.filter.main import main

sys.exit(main(sys.argv[1:]))
