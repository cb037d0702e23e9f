"""Hypothesis profiles for the fuzz tests.

``ci`` (chosen when the environment has ``CI=true``) is derandomized: every run draws the same
examples, so a CI failure reproduces on any machine. ``dev`` draws new examples each run and
keeps failures in the local example database (``.hypothesis/``). Both have no deadline (the
shared test machine is slow and loaded) and a bounded number of examples, so each fuzz test
stays well under a minute. ``HYPOTHESIS_PROFILE=<name>`` picks a profile explicitly.
"""

from __future__ import annotations

import os

from hypothesis import settings

MAX_EXAMPLES = 300

settings.register_profile("dev", deadline=None, max_examples=MAX_EXAMPLES)
settings.register_profile("ci", deadline=None, max_examples=MAX_EXAMPLES, derandomize=True, database=None,
                          print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") == "true" else "dev"))
