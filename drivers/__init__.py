"""hwl's drivers, each run as its own process by RS (docs/drivers.md)."""
