"""The ``hwl`` command line."""
