import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    """Every test starts from the same seed and float64 default, and restores the default."""
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
