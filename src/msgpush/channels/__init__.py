"""Channel types: one module per vendor, and the registry that finds them by type id."""
