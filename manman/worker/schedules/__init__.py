"""The worker's schedules: a loop per server that fires runs, each run its tasks in order."""
