import sys

from hwl.servers.rs.main import main

sys.exit(main(sys.argv[1:]))
