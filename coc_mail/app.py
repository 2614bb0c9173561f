"""The pieces every part of the daemon shares, built once from the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from coc_mail import store
from coc_mail.config import Settings
from coc_mail.mail import dkim
from coc_mail.mail.addresses import Addresses
from coc_mail.mail.compose import Templates
from coc_mail.store.crypto import Keyring, load_keyring

log = logging.getLogger(__name__)


@dataclass
class App:
    """Settings plus the objects derived from them (keys, addresses, database, templates, DKIM)."""

    settings: Settings
    keys: Keyring
    addresses: Addresses
    engine: Engine
    incoming: Engine  # the incoming queue: ``engine`` itself, or a SQLite file of its own
    templates: Templates
    signer: dkim.Signer
    dnsfunc: dkim.DnsFunc

    @property
    def alias(self) -> str:
        return self.addresses.alias

    @property
    def domain(self) -> str:
        return self.addresses.domain


def build(
    settings: Settings, *, create_keys: bool = False, migrate: bool = True, wait: bool = False
) -> App:
    """Open keys, database and templates. ``create_keys`` writes missing key files (serve);
    ``wait`` waits up to ``storage.connect_timeout_seconds`` for the database (serve)."""
    keys, created = load_keyring(settings.storage.key_file, create=create_keys)
    if created:
        log.warning(
            "created a new storage key in %s: back it up, it opens the database",
            settings.storage.key_file,
        )
    key_path = Path(settings.dkim.private_key)
    if create_keys and not key_path.exists():
        dkim.generate_key(key_path)
        log.warning(
            "created a new DKIM key in %s; publish its record (`coc-mail dkim txt`)", key_path
        )
    pem = dkim.load_key(key_path)
    engine = store.make_engine(settings.database_url)
    if wait:
        store.wait_for_database(engine, settings.storage.connect_timeout_seconds)
    if migrate:
        store.check_key(engine, keys, before_migrations=True)
        store.migrate(engine, keys)
    else:
        store.check_schema(engine)
    store.check_key(engine, keys)
    return App(
        settings=settings,
        keys=keys,
        addresses=Addresses(settings.committee.address, keys),
        engine=engine,
        incoming=store.make_incoming(settings.database_url, engine),
        templates=Templates(settings.templates.directory),
        signer=dkim.Signer(pem, settings.dkim.selector, settings.committee.domain),
        dnsfunc=dkim.make_dnsfunc(settings.dkim.dns_overrides),
    )
