"""Convert a transformers_dsvl checkpoint into transformers' own DeepSeek-VL format (`deepseek_vl` for the
SigLIP-only model, `deepseek_vl_hybrid` for SAM + SigLIP), weight for weight, with the upstream processor settings.

    python conversion/convert_to_upstream.py --input_dir my-dsvl-checkpoint --output_dir my-checkpoint-upstream

The work is done by `transformers_dsvl.conversion.upstream.to_upstream`; see its docstring for what differs between
the formats (the upstream processor normalises and makes the hybrid's 384 px view; tying is written explicitly).
"""

import sys

from transformers_dsvl.conversion.upstream_cli import run_to_upstream

if __name__ == "__main__":
    sys.exit(run_to_upstream())
