"""asymvq: inference runtime for SD inpainting with the Asymmetric VQGAN decoder."""
from .models import PRESETS, AsymmetricDecoder, DecoderConfig, preset_config, prepare_mask

__version__ = "0.1.0"
__all__ = ["AsymmetricDecoder", "DecoderConfig", "PRESETS", "preset_config", "prepare_mask", "__version__"]
