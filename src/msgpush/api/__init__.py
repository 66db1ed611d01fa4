"""The REST API (FastAPI): one router per resource, errors in the contract's shape."""
