"""Shared fixtures. Service fixtures live in their own modules, loaded here as plugins."""

pytest_plugins = [
    "tests.fixtures_daemons",
    "tests.fixtures_http",
    "tests.fixtures_kafka",
    "tests.fixtures_redis",
]
