from tests.service import client, dataset, redis, redis_url, settings, worker  # noqa: F401
