"""CLI command groups; see bpfkit.cli."""
