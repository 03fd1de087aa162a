"""The protocols every hwl process speaks, in one package that imports nothing else of hwl.

One module per protocol (``ndev`` for network drivers, ...), and ``fields`` for
building a typed request from a message's fields with one error type for a bad
field (:class:`hwl.proto.fields.FieldError`).
"""
