"""Other systems reading the kit's data: the Prometheus exposition."""
