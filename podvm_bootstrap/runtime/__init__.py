"""`run`: the boot's stages, the head start, the daemon, its supervision,
probes, notify and state."""
