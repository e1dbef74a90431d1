"""OneDNNLinear: the same products as nn.Linear (large ones through oneDNN), training still works."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from splitasr.backbones import linear
from splitasr.backbones.linear import MIN_ONEDNN_MACS, OneDNNLinear, use_onednn_linears

pytestmark = pytest.mark.skipif(linear._onednn_linear() is None, reason="this PyTorch build has no oneDNN linear")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(384, 1536), nn.GELU(), nn.Linear(1536, 384, bias=False))


def test_layers_are_swapped_in_place_with_their_weights() -> None:
    model = _model()
    before = copy.deepcopy(model.state_dict())
    assert use_onednn_linears(model) == 2
    assert all(type(m) is OneDNNLinear for m in (model[0], model[2])) and isinstance(model[0], nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert use_onednn_linears(model) == 0  # already swapped
    half = nn.Linear(4, 4).bfloat16()
    assert use_onednn_linears(half) == 0 and type(half) is nn.Linear  # float32 layers only


@pytest.mark.parametrize("rows", [1, 3, 64, 1500])
def test_products_match_nn_linear(rows: int) -> None:
    reference, model = _model(), _model()
    use_onednn_linears(model)
    x = torch.randn(2, rows, 384)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-4)


def test_large_products_go_through_onednn_and_small_ones_do_not(monkeypatch) -> None:
    calls = []
    op = OneDNNLinear._op or linear._onednn_linear()
    model = _model()
    use_onednn_linears(model)
    monkeypatch.setattr(OneDNNLinear, "_op", lambda *args: calls.append(args[0].shape) or op(*args))
    with torch.inference_mode():
        model(torch.randn(1, 384))  # one row: 0.6 M multiply-adds per layer, below the threshold
        assert 384 * 1536 < MIN_ONEDNN_MACS and calls == []
        model(torch.randn(1500, 384))
    assert calls == [torch.Size([1500, 384]), torch.Size([1500, 1536])]


def test_gradients_flow_as_through_nn_linear() -> None:
    """Training (an adapter upstream needs the input's gradient) takes F.linear, which autograd knows."""
    reference, model = _model(), _model()
    use_onednn_linears(model)
    x1 = torch.randn(1500, 384, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    reference(x1).sum().backward()
    model(x2).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
