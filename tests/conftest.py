"""Session-wide fixtures shared by every test package.

`seaweed_store`: one embedded SeaweedFS server for the whole session (started on first use), as an ObjectStore.
`store`: a fresh, empty bucket on that server for one test. Neither sets environment variables; a test that needs
`LIVO_S3_*` in a subprocess takes them from `store.env()`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from livo.registry.store import EmbeddedSeaweedFS, ObjectStore


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedSeaweedFS]:
    with EmbeddedSeaweedFS(tmp_path_factory.mktemp("seaweedfs"), bucket="livo-session", stop_grace_s=2.0) as server:
        yield server


@pytest.fixture(scope="session")
def seaweed_store(seaweed_server: EmbeddedSeaweedFS) -> ObjectStore:
    return seaweed_server.store()


@pytest.fixture
def store(seaweed_store: ObjectStore) -> ObjectStore:
    fresh = seaweed_store.for_bucket(f"t-{uuid.uuid4().hex[:16]}")
    fresh.ensure_bucket()
    return fresh
