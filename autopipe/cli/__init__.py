"""The command-line interface (``autopipe`` console script)."""
