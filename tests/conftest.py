import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.manual_seed(0)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# A GPU run (tests/gpu/README.md) must not pass on the CPU alone.
if os.environ.get("ACTIVATION_HASH_REQUIRE_GPU") == "1" and "cuda" not in DEVICES:
    raise pytest.UsageError("ACTIVATION_HASH_REQUIRE_GPU=1 but torch sees no GPU "
                            f"(torch.version.cuda={torch.version.cuda})")


@pytest.fixture(params=DEVICES)
def device(request):
    """Every op test runs on the CPU, and on the GPU where one is visible."""
    return request.param


@pytest.fixture
def one_thread():
    """torch on one thread for the test (small models: a second thread only adds noise and
    contention on a shared CI machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def keep_threads():
    """torch's thread count restored after the test (the CLI's --threads changes it)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)
