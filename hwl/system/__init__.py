"""The system library every service and driver uses: SEF, and the RS and DS calls.

MINIX keeps these in libsys; here ``hwl.system.sef`` is the event framework
(startup, init, ping, live update, signals), ``hwl.system.rs`` the
reincarnation server's API (what the ``service`` command sends) and
``hwl.system.ds`` the data store's. ``hwl.system.proto`` holds the message types
they all share.
"""
