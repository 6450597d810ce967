"""Readings of the machine and the process, and the application's own metrics."""
