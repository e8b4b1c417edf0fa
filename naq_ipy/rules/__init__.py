"""Pure rules: durations, times and cron in a zone, retry delays. Imports nothing of naq_ipy but `errors`."""
