"""triserve.operator: the kopf operator that places EnergyPolicies on GPU nodes.

Run with `triserve operator`. Modules: `main` (registers the handlers in a kopf registry
and runs it through kopf's embedding API, for the CLI and the tests alike), `handlers` (thin
kopf handlers), `reconciler` (label writes, status updates), and the pure `placement`,
`aggregation`, `policy_status`; `kube` patches nodes, `settings` holds the injected knobs,
`cli` turns the flags into settings and starts `main`. The fleet
benchmark (`tests/benchmarks/aggregation_fleet.py`) measures status updates on 1,000 nodes.
"""
