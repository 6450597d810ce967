"""`instrument demo`: the example apps under traffic, an incident, and the checked summary."""
