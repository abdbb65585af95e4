"""triserve.simnode — the production node agent on a simulated GPU node.

The one place where the agent (`triserve.node_agent`) and the simulator (`triserve.sim`)
meet: `SimNode` plays the node's hardware, kubelet and exporters for a real `NodeAgent`;
`run_agent` drives a whole scenario through the agent synchronously on simulated time (the
bench, the control tests); `demo` is `triserve demo`. `triserve agent --sim` loads this
package by name, so the production agent never imports the simulator.
"""

from __future__ import annotations

from triserve.simnode.driver import AgentRun, LoopFactory, run_agent
from triserve.simnode.node import SimNode, driver_for, open_node, open_simulation

__all__ = [
    "AgentRun",
    "LoopFactory",
    "SimNode",
    "driver_for",
    "open_node",
    "open_simulation",
    "run_agent",
]
