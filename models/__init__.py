"""Model definitions: the asymmetric decoder and its pieces."""
from .config import PRESETS, DecoderConfig, preset_config
from .decoder import AsymmetricDecoder
from .inputs import prepare_mask

__all__ = ["AsymmetricDecoder", "DecoderConfig", "PRESETS", "preset_config", "prepare_mask"]
