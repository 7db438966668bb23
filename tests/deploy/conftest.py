"""Fixtures for the deployment tests: a real redis-server on a free port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .processes import running_redis


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free port, without persistence, stopped after the module."""
    with running_redis(tmp_path_factory.mktemp("redis")) as (url, _):
        yield url
