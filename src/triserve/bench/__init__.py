"""triserve.bench — `triserve bench`: scenarios x strategies on the simulated GPUs.

`runner` drives one `triserve.control.ControlLoop` per simulated GPU (seeing only what the
node agent would), `catalog` names the strategies and the offline sweeps, `oracle` is the
labelled future-knowing bound, `results` renders the table and JSON, `plots` the figures,
and `cli.main(argv)` ties them together.
"""
