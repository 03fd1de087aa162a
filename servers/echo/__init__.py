"""echo: the smallest SEF service, a template for new services, used by tests and benchmarks."""
