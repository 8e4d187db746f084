"""What makes two networks the same: the architecture keys of ``model:``, and how a network is named in tables,
model cards and messages."""
from __future__ import annotations

from imagenet_kit.config import ModelConfig
from imagenet_kit.config.schema import network_keys

# The ModelConfig keys declared `network=True` (config/schema.py): a checkpoint or an export fits a model only when
# all of them match.
ARCHITECTURE_KEYS = network_keys()


def architecture(model: ModelConfig) -> dict:
    return {key: getattr(model, key) for key in ARCHITECTURE_KEYS}


def architecture_of(record: dict) -> dict:
    """The network a record names (an export's model.json, a results row); keys it lacks (written before they
    existed) take their defaults, which is what those models were."""
    return {**architecture(ModelConfig()), **{key: record[key] for key in ARCHITECTURE_KEYS if key in record}}


def architecture_extras(spec: dict) -> list[str]:
    """What a model has beyond its plain arch, e.g. ['SE 1/16', 'self-attention', 'mish'], from
    ``architecture()``'s keys; keys a record lacks (written before they existed) read as their defaults."""
    spec = {**architecture(ModelConfig()), **spec}
    return [text for text, used in ((f"SE 1/{spec['se_reduction']}", spec["se_reduction"]),
                                    ("self-attention", spec["self_attention"]), ("blurpool", spec["blurpool"]),
                                    ("maxblurpool", spec["maxblurpool"]),
                                    (spec["activation"], spec["activation"] != "relu")) if used]


def architecture_label(spec: dict) -> str:
    """'resnet50d (SE 1/16, maxblurpool)': the arch and its ``architecture_extras``, for table rows."""
    extras = architecture_extras(spec)
    return spec["arch"] + (f" ({', '.join(extras)})" if extras else "")


def describe_architecture(spec: dict) -> str:
    """'resnext50d with SE 1/16 and mish': the arch and its ``architecture_extras``."""
    extras = architecture_extras(spec)
    if len(extras) > 1:
        extras = [", ".join(extras[:-1]) + " and " + extras[-1]]
    return f"{spec['arch']} with {extras[0]}" if extras else spec["arch"]
