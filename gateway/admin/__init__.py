"""The admin API: tenants, keys and usage, changed at runtime and shared by every replica (see store.py)."""
