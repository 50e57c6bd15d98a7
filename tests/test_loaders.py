"""Loaders: class balancing and ordering."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from cropdoc.data.loaders import ImageDataset, class_weights, make_loader


def test_class_weights_are_inverse_frequency_with_mean_one():
    w = class_weights([0, 0, 0, 1], num_classes=3)
    assert w[2] == 0  # absent class
    assert w[1] / w[0] == torch.tensor(3.0)
    assert w[:2].mean().item() == torch.tensor(1.0).item()


def test_sampler_balances_and_eval_keeps_order(tiny_data):
    samples = [(p, 0) for p in sorted(tiny_data.rglob("*.jpg"))[:9]]
    samples += [(sorted(tiny_data.rglob("*.jpg"))[-1], 1)]
    dataset = ImageDataset(samples)
    train = make_loader(
        dataset, batch_size=4, train=True, workers=0, balance_sampler=True, num_classes=2
    )
    assert isinstance(train.sampler, WeightedRandomSampler)
    weights = train.sampler.weights
    assert weights[-1].item() == pytest.approx(9 * weights[0].item())  # lone class-1 image: 9x
    ordered = make_loader(dataset, batch_size=4, train=False, workers=0)
    assert not ordered.drop_last
    assert list(ordered.batch_sampler.sampler) == list(range(len(dataset)))
