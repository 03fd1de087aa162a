"""vfs: block device files (/dev/c0d0 …) for user processes, with driver recovery."""
