"""Tests of coc_mail/mail/ (shared fixtures: tests/conftest.py, helpers: tests/helpers.py)."""
