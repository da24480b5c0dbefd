"""Robustness tests (a package, so their module names cannot clash with same-named tests elsewhere)."""
