"""What happened to a job: status records and results, waiting on jobs, progress reports."""
