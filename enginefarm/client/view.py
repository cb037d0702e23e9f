"""DirectView: explicit control of chosen engines (seed 000's MultiEngine).

Every method takes ``targets`` (int, list of ints or 'all'; default the view's) and
``block`` (default the view's, then the client's). Blocking calls return one entry per
target in target order, or the bare value when the targets are a single int.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from .asyncresult import AsyncResult, LocalResult

if TYPE_CHECKING:
    from .client import Client, Targets

_UNSET: Any = object()


class DirectView:
    def __init__(self, client: Client, targets: Targets = "all", block: bool | None = None) -> None:
        self.client = client
        self.targets = targets
        self.block = block

    def __repr__(self) -> str:
        return f"<DirectView targets={self.targets!r}>"

    # --- plumbing -------------------------------------------------------------------
    def _plan(self, targets: Targets) -> tuple[list[int], bool]:
        chosen = self.targets if targets is _UNSET or targets is None else targets
        return self.client.resolve_targets(chosen), isinstance(chosen, int)

    def _block(self, block: bool | None) -> bool:
        if block is not None:
            return block
        return self.block if self.block is not None else self.client.block

    def _send(
        self,
        kind: str,
        request: Any,
        targets: Targets,
        block: bool | None,
        header: dict[str, Any] | None = None,
        what: str = "",
    ) -> Any:
        engine_ids, single = self._plan(targets)
        blocking = self._block(block)
        task_ids = self.client.send_direct(kind, request, engine_ids, header, what, confirm=not blocking)
        result = AsyncResult(self.client, task_ids, single, kind)
        return result.get() if blocking else result

    def _local(self, targets: Targets, block: bool | None, fn: Callable[[int], Any], kind: str) -> Any:
        engine_ids, single = self._plan(targets)
        values = [fn(engine_id) for engine_id in engine_ids]
        value = values[0] if single else values
        return value if self._block(block) else LocalResult(self.client, value, single, kind)

    # --- code and namespace ---------------------------------------------------------
    def execute(self, code: str, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Run ``code`` in each target's namespace; output lands in the metadata."""
        if not isinstance(code, str):
            raise TypeError(f"code must be a string, not {type(code).__name__}")
        return self._send("execute", code, targets, block)

    def run(self, filename: str, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Execute the contents of a local file on the targets."""
        with open(filename, encoding="utf-8") as handle:
            return self.execute(handle.read(), targets, block)

    def apply(self, f: Callable[..., Any], *args: Any, targets: Targets = _UNSET,
              block: bool | None = None, **kwargs: Any) -> Any:
        """Call ``f(*args, **kwargs)`` on each target.

        ``targets`` and ``block`` are taken by the view; to pass arguments of those names to
        ``f``, use ``apply_request``.
        """
        return self.apply_request(f, args, kwargs, targets=targets, block=block)

    def apply_sync(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.apply_request(f, args, kwargs, block=True)

    def apply_async(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> AsyncResult:
        return cast(AsyncResult, self.apply_request(f, args, kwargs, block=False))

    def apply_request(self, f: Callable[..., Any], args: tuple[Any, ...] = (),
                      kwargs: dict[str, Any] | None = None,
                      targets: Targets = _UNSET, block: bool | None = None) -> Any:
        if not callable(f):
            raise TypeError(f"{f!r} is not callable")
        return self._send("apply", (f, tuple(args), dict(kwargs or {})), targets, block,
                          what=f"function {getattr(f, '__qualname__', f)!r} or its arguments")

    def push(self, namespace: dict[str, Any], targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Update each target's namespace with ``namespace``."""
        if not isinstance(namespace, dict):
            raise TypeError("push takes a dict of names to values")
        return self._send("push", namespace, targets, block, what=_what(namespace))

    def pull(self, names: str | list[str], targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Values of ``names`` (a name or a list of names) from each target."""
        return self._send("pull", names, targets, block)

    def push_function(self, namespace: dict[str, Callable[..., Any]], targets: Targets = _UNSET,
                      block: bool | None = None) -> Any:
        return self._send("push_function", namespace, targets, block, what=_what(namespace))

    def pull_function(self, names: str | list[str], targets: Targets = _UNSET, block: bool | None = None) -> Any:
        return self._send("pull_function", names, targets, block)

    def get_result(self, i: int | None = None, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """The i-th (default: last) executed command on each target: input, stdout, stderr."""
        return self._send("get_result", i, targets, block)

    def reset(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Clear each target's namespace."""
        return self._send("reset", None, targets, block)

    def keys(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Names defined in each target's namespace."""
        return self._send("keys", None, targets, block)

    def kill(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Stop the target engines once the commands queued before this one have run."""
        return self._send("kill", None, targets, block)

    # --- properties (kept in Redis) ---------------------------------------------------
    def set_properties(self, properties: dict[str, Any], targets: Targets = _UNSET,
                       block: bool | None = None) -> Any:
        """Merge JSON-serializable ``properties`` into each target's properties."""
        return self._local(targets, block, lambda e: self.client.registry.set_properties(e, properties),
                           "set_properties")

    def get_properties(self, keys: list[str] | None = None, targets: Targets = _UNSET,
                       block: bool | None = None) -> Any:
        return self._local(targets, block, lambda e: self.client.registry.get_properties(e, keys),
                           "get_properties")

    def has_properties(self, keys: list[str], targets: Targets = _UNSET, block: bool | None = None) -> Any:
        return self._local(targets, block, lambda e: self.client.registry.has_properties(e, list(keys)),
                           "has_properties")

    def del_properties(self, keys: list[str], targets: Targets = _UNSET, block: bool | None = None) -> Any:
        return self._local(targets, block, lambda e: self.client.registry.del_properties(e, list(keys)),
                           "del_properties")

    def clear_properties(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        return self._local(targets, block, lambda e: self.client.registry.clear_properties(e),
                           "clear_properties")

    # --- queues ---------------------------------------------------------------------
    def queue_status(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """For each target: tasks waiting for it and the tasks it has claimed (running)."""
        return self._local(targets, block, self.client.engine_queue_status, "queue_status")

    def clear_queue(self, targets: Targets = _UNSET, block: bool | None = None) -> Any:
        """Abort every task waiting for the targets; the running one finishes."""
        return self._local(targets, block, self.client.clear_engine_queue, "clear_queue")

    def get_ids(self) -> list[int]:
        return self.client.ids


def _what(namespace: dict[str, Any]) -> str:
    return "value(s) for " + ", ".join(repr(k) for k in list(namespace)[:5])
