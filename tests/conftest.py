import os
import sys

import torch

# Tests import their helpers (model_helpers, reference_original, ...) by module name.
sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
