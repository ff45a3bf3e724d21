import pytest
import torch

# The tests use tiny tensors, for which a second intra-op thread costs more than it gives (and
# on a loaded 2-core CI machine much more); one thread also makes timings reproducible.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    """Every test starts from the same seed and float64 default, and restores the default."""
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
