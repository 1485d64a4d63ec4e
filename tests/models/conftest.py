"""Model tests run torch with one intra-op thread: their tensors are tiny, and on a busy 2-core CI machine
OpenMP's waiting threads made them up to 50x slower (measured). What they check does not depend on it."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
