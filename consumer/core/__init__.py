"""Pure policy: scheduler, offset tracker, breaker, admission decisions (no aiokafka, no llama)."""
