"""A tiny Crunch package: the base class coordinators name and crunchers implement.

Real Crunches publish theirs on PyPI (e.g. `birdgame.trackers.trackerbase.TrackerBase`); model
hosts find it on their Python path. The examples and tests put `examples/` on PYTHONPATH.
"""
