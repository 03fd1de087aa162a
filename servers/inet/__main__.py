import sys

from hwl.servers.inet.main import main

sys.exit(main(sys.argv[1:]))
