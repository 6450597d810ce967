"""OTLP/HTTP metrics exporter, a backend the flusher writes to beside the store.

Implemented in :mod:`instrument.storage.otlp`; import it from here.
"""

from instrument.storage.otlp import OTLPBackend, OTLPExportError

__all__ = ["OTLPBackend", "OTLPExportError"]
