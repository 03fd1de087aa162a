"""Fault campaigns (docs/campaigns.md): a workload times a weighted mix of faults,
trial after trial, each on a fresh system, with invariants checked after each.

- :mod:`.spec`: the SPEC file (TOML) and the builtin specs;
- :mod:`.schedule`: the seed -> one plan per trial (fault, target, timing);
- :mod:`.workload`: the client's disk operations and the host's model of the disk;
- :mod:`.trial`: one trial on a booted system; :mod:`.invariants`: its checks and outcome;
- :mod:`.record`: the JSON line per trial; :mod:`.runner`: the pool (local or Dask);
- :mod:`.replay`: one trial again from its seed; :mod:`.report`: tables and figures.
"""
