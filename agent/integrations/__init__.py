"""Thin adapters for training frameworks (imported lazily; the core never imports them)."""
