"""Edges of the system: the HTTP gateway (old API over Kafka) and replay."""
