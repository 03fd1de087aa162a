"""inet: the TCP/IP server (issue 18). Its protocol layers are pure: they parse and
build frames and keep state, with time and output passed in, so each is tested
without QEMU and against Linux through a TAP device; the server process wires
them to NIC drivers (NDEV) and to clients (``hwl.net``)."""
