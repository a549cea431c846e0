import pytest
import trio.testing


@pytest.fixture
def mock_clock():
    """A MockClock that jumps whenever every task is blocked: durable time runs instantly."""
    return trio.testing.MockClock(autojump_threshold=0)
