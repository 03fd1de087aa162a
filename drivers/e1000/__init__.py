"""e1000: the Intel PRO/1000 driver (QEMU e1000)."""
