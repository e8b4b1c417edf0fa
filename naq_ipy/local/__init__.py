"""Processes this machine starts for a kernel or `naq lab`: a nats-server, workers and a scheduler."""
