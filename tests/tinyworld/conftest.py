"""The small tiny world the tiny-world tests read, built (or found in the session's cache) once."""

import pytest

from rlhf.config import TinyWorldConfig
from rlhf.tinyworld.build import ensure_tinyworld

from ..conftest import SMALL_WORLD, quiet


@pytest.fixture(scope="module")
def world():
    return ensure_tinyworld(TinyWorldConfig(**SMALL_WORLD), log=quiet)
