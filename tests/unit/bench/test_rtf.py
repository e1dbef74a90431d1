"""`splitasr bench rtf --device cuda` on a machine without CUDA: a clear error before anything loads."""

from __future__ import annotations

import pytest
import torch

from splitasr.cli import main


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_bench_rtf_on_cuda_says_cuda_is_missing(capsys):
    assert main(["bench", "rtf", "--device", "cuda", "--json"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err
