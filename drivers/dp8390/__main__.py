import sys

from hwl.drivers.dp8390.main import main

sys.exit(main(sys.argv[1:]))
