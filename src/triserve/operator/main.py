"""The kopf entry module: `kopf run -m triserve.operator.main` (what `triserve operator` runs).

Only registers handlers, on kopf's default registry, with settings read from the
`TRISERVE_OPERATOR_*` environment (see `settings.OperatorSettings.from_env`). The handlers
themselves live in `handlers.py`, the logic in the modules they call.
"""

from __future__ import annotations

import kopf

from triserve.operator import handlers
from triserve.operator.settings import OperatorSettings

placer = handlers.register(kopf.get_default_registry(), OperatorSettings.from_env())
