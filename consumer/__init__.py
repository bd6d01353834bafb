"""The explainstream consumer service: Kafka IO, scheduling, offsets, engines, HTTP, metrics."""
