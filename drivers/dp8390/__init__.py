"""dp8390: the NE2000 PCI driver (QEMU ne2k_pci)."""
