"""The triserve API: EnergyPolicy and NodeEnergyReport models, keys, CRD generation.

Pure (pydantic only): every other layer may import it; it imports none of them.
"""

from __future__ import annotations

from triserve.api.errors import PolicyError, load_policy_file, parse_policy_spec
from triserve.api.models import (
    AISource,
    EnergyPolicy,
    EnergyPolicySpec,
    LabelSelector,
    PolicyMode,
    Strategy,
)

__all__ = [
    "AISource",
    "EnergyPolicy",
    "EnergyPolicySpec",
    "LabelSelector",
    "PolicyError",
    "PolicyMode",
    "Strategy",
    "load_policy_file",
    "parse_policy_spec",
]
