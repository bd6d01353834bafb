"""Developer tools: dev broker, demo, benchmarks, synthetic models (the runtime never imports this)."""
