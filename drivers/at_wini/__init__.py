"""at_wini: the ATA/IDE block driver for QEMU's PIIX IDE (drivers/at_wini/main.py)."""
