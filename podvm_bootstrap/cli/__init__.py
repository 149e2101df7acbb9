"""The command line, on top of every stage: the parser (main), the commands'
glue (commands), the commands that are more than glue (bake, status,
measurements, collect) and what only they need (collect's redaction rules,
the man pages made from the parser and the docs)."""
