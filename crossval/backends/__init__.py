"""Backends: every engine answers the same questions (DESIGN §3)."""
