"""Fixtures shared by the socket tests."""

from __future__ import annotations

import pytest
import zmq


@pytest.fixture
def ctx():
    """A context whose sockets never linger, so teardown cannot hang on unsent messages."""
    context = zmq.Context()
    context.setsockopt(zmq.LINGER, 0)
    yield context
    context.destroy(linger=0)
