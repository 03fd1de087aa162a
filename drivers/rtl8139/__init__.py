"""rtl8139: the Realtek 8139 driver (QEMU rtl8139; C+ descriptors, or the classic ring)."""
