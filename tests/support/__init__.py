"""Helpers shared by several test packages (one definition each)."""
