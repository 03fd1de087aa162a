"""Machine control: QEMU from a profile, QMP, the serial lines, the stub image."""
