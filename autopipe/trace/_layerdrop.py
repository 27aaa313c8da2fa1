"""The random layer skipping a traced model would branch on, and how a user turns it off.

[Note: layerdrop]
Wav2Vec2, HuBERT, BART, Whisper and their kin skip each layer at random while training
(LayerDrop): ``skip_the_layer = torch.rand([]) < self.config.layerdrop``, then ``if not
skip_the_layer``, a Python branch on a tensor that neither front end can trace (torch.fx:
"Proxy object cannot be iterated", torch.export: "Could not guard on data-dependent
expression"). A pipeline cannot skip a layer that lives on another stage anyway; the fix
is a config without it, which the trace error names with the values found.
"""

from __future__ import annotations

from torch import nn


def layerdrop_settings(model: nn.Module) -> list[tuple[str, str, float]]:
    """The nonzero LayerDrop probabilities in the configs of ``model``'s modules in training
    mode (in eval mode no layer is skipped), as (config class, attribute, value), each
    attribute once (the outermost config's)."""
    found: dict[str, tuple[str, float]] = {}
    for _, module in model.named_modules():
        config = getattr(module, "config", None)
        if config is None or not module.training:
            continue
        names = [k for k in getattr(config, "__dict__", {}) if k.endswith("layerdrop")]
        for key in sorted(names):
            value = getattr(config, key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                found.setdefault(key, (type(config).__name__, float(value)))
    return [(cls, key, value) for key, (cls, value) in found.items()]


def layerdrop_hint(model: nn.Module) -> str | None:
    """What to set so that ``model`` traces, where it skips layers at random; else None."""
    found = layerdrop_settings(model)
    if not found:
        return None
    shown = ", ".join(f"config.{key}={value:g}" for _, key, value in found)
    zero = ", ".join(f"{key}=0" for _, key, _ in found)
    # some models read the probability when built (Whisper's self.layerdrop), so setting it
    # on the built model's config is not enough: the config must hold it
    return (f"the model skips layers at random while training ({shown}), a branch on a random "
            f"tensor that cannot be traced: build it from a config with {zero} "
            f"({found[0][0]}(..., {zero}))")
