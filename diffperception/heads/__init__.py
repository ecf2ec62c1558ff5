"""Task heads: one per file."""
