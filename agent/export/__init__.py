"""Export of the host snapshot: the Prometheus collector, the /metrics HTTP(S) server and the Pushgateway."""
