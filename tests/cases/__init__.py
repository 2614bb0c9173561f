"""Tests of coc_mail/cases/ (shared fixtures: tests/conftest.py, helpers: tests/helpers.py)."""
