"""The fault suite: msgpush under kills, storage faults, database outages and receiver faults."""
