"""Auto classes after `import transformers_dsvl`, and `trust_remote_code=True` where the package is absent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers
from model_helpers import pixel_kwargs, prompt_ids, random_images, tiny_model
from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoModelForSequenceClassification

import transformers_dsvl
from transformers_dsvl import (
    DeepSeekVLConfig,
    DeepSeekVLForConditionalGeneration,
    DeepSeekVLForSequenceClassification,
    DeepSeekVLModel,
)


def test_model_type_does_not_clash_with_transformers_own_ports():
    assert DeepSeekVLConfig.model_type not in ("deepseek_vl", "deepseek_vl_hybrid")
    assert transformers.AutoConfig.for_model("deepseek_vl").__class__.__name__ == "DeepseekVLConfig"


@pytest.mark.parametrize("variant", ["tiny", "tiny-hybrid"])
def test_auto_classes_load_saved_checkpoint(tmp_path, variant):
    model = tiny_model(variant)
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DeepSeekVLConfig)
    assert type(AutoModel.from_pretrained(tmp_path)) is DeepSeekVLModel
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path)
    assert type(loaded) is DeepSeekVLForConditionalGeneration
    input_ids = torch.tensor([prompt_ids(model.config, [7], 1, [9])])
    kwargs = dict(input_ids=input_ids, **pixel_kwargs(model.config, random_images(model.config, 1)))
    torch.testing.assert_close(loaded(**kwargs).logits, model(**kwargs).logits)
    assert type(AutoModelForSequenceClassification.from_pretrained(tmp_path)) is DeepSeekVLForSequenceClassification


@pytest.mark.skipif(not hasattr(transformers, "AutoModelForVision2Seq"),
                    reason="AutoModelForVision2Seq was removed in transformers 5 (AutoModelForImageTextToText replaces it)")
def test_auto_model_for_vision2seq_on_transformers_4(tmp_path):
    tiny_model("tiny").save_pretrained(tmp_path)
    assert type(transformers.AutoModelForVision2Seq.from_pretrained(tmp_path)) is DeepSeekVLForConditionalGeneration


def test_saved_checkpoint_carries_remote_code(tmp_path):
    tiny_model("tiny-hybrid").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "dsvl"
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_dsvl.DeepSeekVLForConditionalGeneration"
    assert config["auto_map"]["AutoConfig"] == "configuration_dsvl.DeepSeekVLConfig"
    for name in ("configuration_dsvl.py", "modeling_dsvl.py", "modeling_dsvl_sam.py"):
        assert (tmp_path / name).read_text() == (
            open(os.path.join(os.path.dirname(transformers_dsvl.__file__), name)).read()
        )


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockPackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "transformers_dsvl" or name.startswith("transformers_dsvl."):
                raise ImportError("transformers_dsvl is blocked in this test")

    sys.meta_path.insert(0, BlockPackage())
    import torch
    from transformers import AutoModelForImageTextToText
    try:
        import transformers_dsvl  # noqa: F401
        raise SystemExit("the package must not be importable here")
    except ImportError:
        pass
    checkpoint, inputs_path, output_path = sys.argv[1:4]
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    inputs = torch.load(inputs_path)
    with torch.no_grad():
        torch.save(model(**inputs).logits, output_path)
    """
)


@pytest.mark.parametrize("variant", ["tiny", "tiny-hybrid"])
def test_trust_remote_code_without_the_package(tmp_path, variant):
    model = tiny_model(variant)
    checkpoint = tmp_path / "checkpoint"
    model.save_pretrained(checkpoint)
    inputs = dict(input_ids=torch.tensor([prompt_ids(model.config, [7], 1, [9])]),
                  **pixel_kwargs(model.config, random_images(model.config, 1)))
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", REMOTE_CODE_SCRIPT, str(checkpoint), str(tmp_path / "inputs.pt"),
         str(tmp_path / "logits.pt")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected)
