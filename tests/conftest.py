import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


import pytest  # noqa: E402

from tests.s3_fixtures import S3_ENV, moto_server  # noqa: E402


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server, its own process on loopback, one per test module."""
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture()
def s3_env(s3_endpoint, monkeypatch):
    """Credentials for the moto server in the environment (forked workers inherit them)."""
    from vdp.io import storage

    for k, v in S3_ENV.items():
        monkeypatch.setenv(k, v)
    yield s3_endpoint
    storage.configure(None)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray, started by the module's first --executor ray run and shut down after its last,
    with S3 credentials in its workers' environment (Ray forwards AWS_* variables when it starts)."""
    ray = pytest.importorskip("ray")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in S3_ENV.items():
            mp.setenv(k, v)
        yield
        if ray.is_initialized():
            ray.shutdown()
