"""Tests of coc_mail/store/ (shared fixtures: tests/conftest.py, helpers: tests/helpers.py)."""
