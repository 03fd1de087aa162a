import sys

from hwl.servers.echo.main import main

sys.exit(main(sys.argv[1:]))
