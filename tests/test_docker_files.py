"""The Docker files agree with the package: the image's configuration is the Docker one, its
HEALTHCHECK a real command, and nothing secret goes into the build context."""

from __future__ import annotations

import re
from pathlib import Path

from coc_mail import cli, config

ROOT = Path(__file__).resolve().parent.parent


def test_the_image_reads_the_docker_configuration_and_checks_its_health() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    found = re.search(r"COC_MAIL_CONFIG=(\S+)", dockerfile)
    assert found and found.group(1) == "/srv/coc-mail/config/docker.toml"
    settings = config.load(ROOT / "config" / "docker.toml")
    assert settings.server.host == "0.0.0.0" and settings.server.port == 2525
    assert "EXPOSE 2525" in dockerfile and "VOLUME /srv/coc-mail/var" in dockerfile
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    health = re.search(r'HEALTHCHECK .*?CMD \["coc-mail", "([a-z]+)"', dockerfile, re.S)
    assert health and health.group(1) == "healthcheck"
    assert cli.parser().parse_args(["healthcheck"]).func is cli.cmd_healthcheck


def test_compose_mounts_the_configuration_and_hands_the_password_apart() -> None:
    compose = (ROOT / "docker-compose.yml").read_text()
    assert "- ./config:/srv/coc-mail/config:ro" in compose
    assert "- ./tls:/srv/coc-mail/tls:ro" in compose
    assert f"{config.ENV_DATABASE_PASSWORD}: ${{POSTGRES_PASSWORD" in compose
    assert "postgresql+psycopg://coc:" not in compose  # no password inside a URL
    assert '"pg_isready", "-h", "127.0.0.1"' in compose


def test_the_build_context_leaves_out_secrets_and_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    for entry in (".git", ".env", ".venv", "var/", "*.key", "*.pem", "*.db", "tests/", "bench/"):
        assert entry in ignored, entry
