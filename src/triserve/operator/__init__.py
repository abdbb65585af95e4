"""triserve.operator: the kopf operator that places EnergyPolicies on GPU nodes.

Run with `triserve operator` (`kopf run -m triserve.operator.main`). Modules: `main`
(registers handlers), `handlers` (thin kopf handlers), `reconciler` (label writes, status
updates), and the pure `placement`, `aggregation`, `policy_status`; `kube` patches nodes,
`settings` holds the injected knobs, `cli` builds the kopf command line. The fleet
benchmark (`tests/benchmarks/aggregation_fleet.py`) measures status updates on 1,000 nodes.
"""
