"""Scheduling policies and the scheduler daemon that applies them."""
