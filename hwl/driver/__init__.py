"""libdriver: the main loop and dispatch table of hwl's drivers (block drivers
in :mod:`hwl.driver.blockdriver`, their protocol in :mod:`hwl.driver.proto`)."""
