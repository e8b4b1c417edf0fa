"""The client API: `Job`, `Queue`, the module-level shortcuts, job pickling and the sync bridge."""
