"""`dsvl demo`: a tiny DeepSeek-VL trained from scratch on synthetic data through the paper's three stages."""

from .data import DemoDataSizes, build_datasets
from .run import DemoResult, DemoSettings, demo_config, run_demo

__all__ = ["DemoDataSizes", "DemoResult", "DemoSettings", "build_datasets", "demo_config", "run_demo"]
