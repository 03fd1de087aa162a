import sys

from servers.echo.main import main

sys.exit(main(sys.argv[1:]))
