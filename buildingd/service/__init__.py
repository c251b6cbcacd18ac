"""Service: CLI, composition root, settings-driven daemon lifecycle, console and systemd glue."""
