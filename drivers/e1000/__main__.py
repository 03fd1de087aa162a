import sys

from hwl.drivers.e1000.main import main

sys.exit(main(sys.argv[1:]))
