"""The filter driver: checksums and mirroring between VFS and the disk drivers (docs/filter.md)."""
