"""Reliability and security: load, injected faults, hostile input, secrets (issue 9)."""
