"""Convert an original deepseek-ai DeepSeek-VL checkpoint into transformers_dsvl (or back with --direction to-original).

    python conversion/convert_deepseek_vl_original.py \
        --input_dir deepseek-vl-7b-chat --output_dir deepseek-vl-7b-chat-dsvl

Same as `dsvl convert ...`; the options are documented in docs/conversion.md and by `--help`. The work is done by
`transformers_dsvl.conversion`.
"""

import sys

from transformers_dsvl.conversion.cli import main

if __name__ == "__main__":
    sys.exit(main())
