"""Ops tooling apart from the runtime: alert rules, dashboards, the Helm chart's generated parts, Grafana push,
the local stack and generated docs, all from the one check catalogue. Importing ``agent`` never imports this."""
