"""``python -m servers.ds``: the data store server."""

from servers.ds.main import main

raise SystemExit(main())
