"""System servers, each run as its own process by RS: ``rs``, ``ds`` (more to come)."""
