"""``instrument demo``: both example apps under traffic, an incident, and a checked summary.

``run`` drives it: ``servers`` starts the examples on loopback, ``traffic`` sends the
weighted mix, ``alerts`` provokes and watches the demo alert, ``console`` prints as it
goes, ``report`` and ``summary`` check what was recorded against what was sent, and
``overhead`` measures the kit's cost on this run.
"""
