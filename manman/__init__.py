"""manman: a light, correct and fast manager for dedicated game servers."""

__version__ = "0.1.0"
