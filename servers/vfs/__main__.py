import sys

from hwl.servers.vfs.main import main

sys.exit(main(sys.argv[1:]))
