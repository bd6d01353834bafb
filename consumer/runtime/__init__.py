"""ConsumerService (lifecycle and wiring) and the request runner."""
