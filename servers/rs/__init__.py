"""RS, the reincarnation server: starts services, watches them, restarts and updates them.

One file per role, as MINIX's ``servers/rs``: ``main`` (the loop), ``request``
(the ``service`` requests), ``manager`` (starting, stopping, restarting),
``update`` (live update), ``table`` (the service table), ``events`` (the event
log), ``timers`` (deadlines on the kernel's alarm).
"""
