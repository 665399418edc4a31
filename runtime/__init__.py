"""asymvq: inference runtime for SD inpainting with the Asymmetric VQGAN decoder."""
from .metrics import preservation_error
from .models import PRESETS, AsymmetricDecoder, DecoderConfig, prepare_mask, preset_config
from .models.checkpoints import CheckpointError, load_decoder

__version__ = "0.1.0"
__all__ = [
    "AsymmetricDecoder",
    "CheckpointError",
    "DecoderConfig",
    "PRESETS",
    "__version__",
    "load_decoder",
    "prepare_mask",
    "preservation_error",
    "preset_config",
]
