"""triserve.node_agent — the per-node agent: discovery, GPU mapping, telemetry, control, export.

`triserve agent` (`triserve.node_agent.main`) runs it in a cluster (DaemonSet, `NODE_NAME`
from the downward API) or standalone from a policy file; `triserve demo`
(`triserve.simnode.demo`) runs it on a simulated node. Layers, bottom up:

- `stages`: a pod's stage, pipeline, metrics endpoint, GPU override and opt-out.
- `podresources`: the kubelet pod-resources gRPC client; `gpumap`: pods → GPUs.
- `dcgm`, `serving`, `scraping`: dcgm-exporter and serving-engine metrics, scraped async.
- `safety`: the state file, a range-checking backend wrapper and the watchdog.
- `gpus`, `agent`: one `ControlLoop` per managed GPU and the tick over all of them.
- `exporter`, `reports`: Prometheus `/metrics` and the NodeEnergyReport.
- `kube`, `standalone`, `simnode`, `main`, `demo`: where pods and policy come from.

It never imports `triserve.operator`; both share `triserve.api`.
"""
