"""Presets: complete task-model configs (minus trained weights); the file stem is the name."""
