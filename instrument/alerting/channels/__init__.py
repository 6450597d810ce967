"""Where alerts go: one module per channel."""
