"""The CLI commands other than `run`: each module is one command (or one group of them)."""
