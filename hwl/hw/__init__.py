"""Hardware facts (registers, commands) and link-level helpers built on them."""
