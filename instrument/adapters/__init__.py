"""Where requests and calls are timed: one module per framework or kind of call."""
