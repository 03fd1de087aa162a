"""The kernel: endpoints, IPC, privileges, kernel calls."""
