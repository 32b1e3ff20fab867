"""The `distill` command: server processes, keys and the demo."""
