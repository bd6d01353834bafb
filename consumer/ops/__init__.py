"""Operations surface: HTTP routes, Prometheus metrics, GPU telemetry, status."""
