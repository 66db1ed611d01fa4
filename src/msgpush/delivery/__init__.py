"""Delivery: the engine (claim, send, record), rate windows, the shared HTTP session."""
