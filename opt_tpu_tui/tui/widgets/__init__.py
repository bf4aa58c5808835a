"""Widgets that only render what they are given and post messages; no model or disk access."""
