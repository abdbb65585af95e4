"""triserve.bench — `triserve bench`: scenarios x strategies on the simulated GPUs.

`runner` drives one `triserve.control.ControlLoop` per simulated GPU (seeing only what the
node agent would), `catalog` names the strategies, `search` is the offline coordinate search
behind the "-best" rows and the optimum, `lookahead` and `optimum` are the labelled rows that
read simulator internals (the second is the hindsight upper bound), `results` renders the
table and JSON, `seeds` the multi-seed aggregate, `plots` the figures, and `cli.main(argv)`
ties them together.
"""
