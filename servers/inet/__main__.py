import sys

from servers.inet.main import main

sys.exit(main(sys.argv[1:]))
