"""What every stage shares, importing nothing of the project: error types and
their exit codes, bounded file I/O, the paths, logging, retry pacing, text
tables."""
