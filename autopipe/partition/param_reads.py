"""The model's parameters and which of them each stage reads, for a layer-granular plan's record.

[Note: the parameters in a plan's layer record]
An engine's part is a module list, and it keeps what lies under the modules it lists, so
``autopipe export`` must know every parameter of the model and which ones each stage's nodes
read: a module the forward never calls (ESM's ``contact_head``) lies in no part unless the
export adds it, and a part that lists a module also keeps a tied alias its stage never reads
([Note: every parameter in a part] in ``autopipe.export.params``). The plan's stages name
nodes and modules, not parameters, so until 2026-12-08 the export needed the profile the
plan was made from (``--profile``), and without it silently left such parameters out. The
layer record now carries what the check needs: every parameter's canonical name, the groups
of names for one shared Parameter, and per stage the canonical names its nodes read (the
output node, which owns the parameters no node reads, left out). About one name per
parameter tensor and stage that reads it: a 70B Llama's plan gains some 60 KB.
"""

from __future__ import annotations

from typing import Any

from autopipe.plan_format import Plan
from autopipe.profile.profile import Profile


def param_reads(plan: Plan, profile: Profile) -> dict[str, Any]:
    """``{"names": [...], "tied": [[...], ...], "reads": [[...] per stage]}`` for ``plan``'s
    layer record: ``names`` every parameter (canonical names, the profile's order), ``tied``
    the profile's groups of names for one Parameter (canonical first), ``reads`` per stage
    the canonical names its nodes read, in the order they read them."""
    return {"names": list(profile.params), "tied": [list(g) for g in profile.tied],
            "reads": [profile.param_reads(stage.nodes) for stage in plan.stages]}
