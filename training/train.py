#!/usr/bin/env python
"""Run one stage of the DeepSeek-VL training recipe (see docs/training.md).

    python training/train.py --stage 2 --config training/configs/stage2_7b.yaml --model runs/stage1
    accelerate launch --config_file training/accelerate/ddp.yaml training/train.py --stage 2 --config ...

Same as `dsvl train`; all logic lives in `transformers_dsvl.training`.
"""

import sys

from transformers_dsvl.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
