"""End-to-end tests: real Prometheus/Alertmanager binaries on 127.0.0.1 (helpers in servers.py)."""
