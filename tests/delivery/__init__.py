"""Tests of coc_mail/delivery/ (shared fixtures: tests/conftest.py, helpers: tests/helpers.py)."""
