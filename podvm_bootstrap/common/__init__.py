"""What every stage shares: error types and exit codes, bounded file I/O, the
paths, logging, retry pacing, text tables."""
