"""Developer tools: dev broker, demo, benchmarks, synthetic models.

The runtime never imports this package.
"""
