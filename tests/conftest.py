"""Fixtures shared by the socket tests."""

from __future__ import annotations

import logging

import pytest
import zmq


@pytest.fixture
def ctx():
    """A context whose sockets never linger, so teardown cannot hang on unsent messages."""
    context = zmq.Context()
    context.setsockopt(zmq.LINGER, 0)
    yield context
    context.destroy(linger=0)


@pytest.fixture(autouse=True)
def restore_logging():
    """Tools under test set up logging for a process; put the test runner's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level
