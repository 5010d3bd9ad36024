"""Conversion between the original deepseek-ai DeepSeek-VL checkpoints (`model_type: multi_modality`) and this
package's format, both ways, strict (every tensor accounted for) and streamed (one tensor in memory at a time).

    from transformers_dsvl.conversion import convert_original_to_dsvl, convert_dsvl_to_original

Command line: `dsvl convert` or `python conversion/convert_deepseek_vl_original.py`; see docs/conversion.md.
"""

from .convert import ConversionResult, convert_dsvl_to_original, convert_original_to_dsvl
from .original_format import (
    CheckpointMismatchError,
    OriginalConfigError,
    build_tensor_mappings,
    config_from_original,
    config_to_original,
    unused_original_tensor_names,
)
from .processor_files import ProcessorFilesError
from .streaming import CheckpointFormatError, PickleCheckpointRefused
from .verify import VerificationError, verify_converted_checkpoint

__all__ = [
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "ConversionResult",
    "OriginalConfigError",
    "PickleCheckpointRefused",
    "ProcessorFilesError",
    "VerificationError",
    "build_tensor_mappings",
    "config_from_original",
    "config_to_original",
    "convert_dsvl_to_original",
    "convert_original_to_dsvl",
    "unused_original_tensor_names",
    "verify_converted_checkpoint",
]
