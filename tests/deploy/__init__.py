"""Deployment artefacts: Helm chart, container image, Prometheus rules, Grafana dashboard."""
