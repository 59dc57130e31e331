"""Disk use of the servers' files directories, and the disk limit."""
