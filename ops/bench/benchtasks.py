"""The one task every system runs. Workers import it by name: keep ops/bench on PYTHONPATH."""


def add(x, y):
    return x + y


def add_many(pairs):
    """A batch of ``add`` calls, for systems without a built-in chunked map (Dramatiq)."""
    return [add(x, y) for x, y in pairs]
