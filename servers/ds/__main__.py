"""``python -m hwl.servers.ds``: the data store server."""

from hwl.servers.ds.main import main

raise SystemExit(main())
