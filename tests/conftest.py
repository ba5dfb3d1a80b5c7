import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def single_torch_thread():
    """For modules of tiny models (pytestmark = pytest.mark.usefixtures("single_torch_thread"))."""
    from asr_factories import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """A command's main() run in-process (dataset2.py, train.py) points logging at the stderr of
    that test, which pytest closes afterwards: later tests' log records would fail on it."""
    loggers = [logging.getLogger(), logging.getLogger("conrwkv")]
    saved = [(logger, list(logger.handlers), logger.level) for logger in loggers]
    yield
    for logger, handlers, level in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)
