"""PCI, the bus server: enumerates the bus, keeps per-service ACLs, hands out devices.

``bus`` reads configuration space through the kernel's ``devio`` calls and scans
the bus, ``acl`` says which caller may see which device, ``requests`` answers the
requests, ``reservations`` keeps who holds what, ``state`` is what a live update
carries, ``main`` is the server loop; run it as ``python -m hwl.servers.pci`` (RS
does). The client calls are ``hwl.system.pci``; docs/pci.md describes the protocol.
"""
