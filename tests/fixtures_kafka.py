"""Placeholder; fixtures are added by the owner of this module."""
