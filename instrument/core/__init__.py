"""The pipeline: what happens to a sample between the request and the backends."""
