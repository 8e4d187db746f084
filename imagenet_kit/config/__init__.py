"""The run's configuration: every key declared once (``schema``), checked (``checks``), read from recipes and GPU
profiles (``recipes``), applied in order and typed (``load``), and turned into the commands' flags (``flags``)."""
from imagenet_kit.config.load import config_from_dict, describe, dump_config, load_config, set_key
from imagenet_kit.config.schema import (
    SECTIONS,
    TOP_LEVEL,
    DataConfig,
    LRFindConfig,
    ModelConfig,
    OptimConfig,
    ReferenceConfig,
    RunConfig,
    SubsetConfig,
    TrainConfig,
)

__all__ = ["SECTIONS", "TOP_LEVEL", "DataConfig", "LRFindConfig", "ModelConfig", "OptimConfig", "ReferenceConfig",
           "RunConfig", "SubsetConfig", "TrainConfig", "config_from_dict", "describe", "dump_config", "load_config",
           "set_key"]
