"""Tests of coc_mail/smtp/ (shared fixtures: tests/conftest.py, helpers: tests/helpers.py)."""
