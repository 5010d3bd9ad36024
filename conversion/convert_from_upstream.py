"""Convert a checkpoint of transformers' own DeepSeek-VL port (`deepseek_vl` / `deepseek_vl_hybrid`) into
transformers_dsvl, weight for weight; the upstream processor's normalisation moves into the model config.

    python conversion/convert_from_upstream.py --input_dir deepseek-vl-7b-chat-hf --output_dir deepseek-vl-7b-chat-dsvl

The work is done by `transformers_dsvl.conversion.upstream.from_upstream`; see its docstring.
"""

import sys

from transformers_dsvl.conversion.upstream_cli import run_from_upstream

if __name__ == "__main__":
    sys.exit(run_from_upstream())
