"""DeepSeekVLForSequenceClassification: pooling on the last real token, the three problem types."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from model_helpers import left_pad, pixel_kwargs, prompt_ids, random_images, randomize_, tiny_config

from transformers_dsvl import DeepSeekVLForSequenceClassification


def classifier(num_labels: int, problem_type=None):
    config = tiny_config("tiny-hybrid", num_labels=num_labels, problem_type=problem_type)
    config._attn_implementation = "eager"
    return randomize_(DeepSeekVLForSequenceClassification(config)).eval()


def batch(config):
    samples = [prompt_ids(config, [7], 1, [9, 10]), prompt_ids(config, [3, 4, 6])]
    input_ids, attention_mask = left_pad(samples)
    return samples, dict(input_ids=input_ids, attention_mask=attention_mask,
                         **pixel_kwargs(config, random_images(config, 1)))


def test_pools_last_real_token_under_left_and_right_padding():
    model = classifier(3)
    samples, inputs = batch(model.config)
    logits = model(**inputs).logits
    assert logits.shape == (2, 3)
    alone = model(input_ids=torch.tensor([samples[1]])).logits
    torch.testing.assert_close(logits[1], alone[0], atol=1e-5, rtol=1e-5)
    right_ids = torch.tensor([samples[1] + [1, 1]])
    right = model(input_ids=right_ids, attention_mask=torch.tensor([[1] * len(samples[1]) + [0, 0]])).logits
    torch.testing.assert_close(right[0], alone[0], atol=1e-5, rtol=1e-5)


def test_single_label_loss_is_cross_entropy():
    model = classifier(3)
    _, inputs = batch(model.config)
    labels = torch.tensor([2, 0])
    out = model(labels=labels, **inputs)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert model.config.problem_type == "single_label_classification"


def test_multi_label_loss_is_binary_cross_entropy():
    model = classifier(3)
    _, inputs = batch(model.config)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    out = model(labels=labels, **inputs)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels))


def test_regression_loss_is_mse_and_trains():
    model = classifier(1)
    _, inputs = batch(model.config)
    labels = torch.tensor([0.5, -1.5])
    out = model(labels=labels, **inputs)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), labels))
    model.train()
    optimizer = torch.optim.Adam(model.score.parameters(), lr=0.01)
    losses = []
    for _ in range(40):
        loss = model(labels=labels, **inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
