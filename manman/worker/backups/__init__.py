"""Backups of a server's files: tar.zst archives written, kept, pruned and restored."""
