"""Model implementations, one folder per model."""
