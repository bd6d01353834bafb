"""The only code that imports aiokafka: intake, result sinks, dead letters, commits, topics, lag."""
