"""Scheduled jobs: the record, its store in KV, changes to it, fire planning and the scheduler process."""
