"""What the Client's mixins (``hub.HubMethods``, ``farming.TaskFarming``) use of the Client.

Their methods take ``self`` as ``ClientParts``, a Protocol that Client satisfies, so each
mixin is checked against the parts of the Client it needs. For type checking only: nothing
imports this module at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..broker import Publisher
    from ..broker.publisher import Outgoing
    from ..config import Settings
    from ..keys import KeyRing
    from ..names import Names
    from ..store import TaskRecord
    from ..store.history import History
    from ..store.records import NewTask, Records
    from ..store.registry import Registry
    from .asyncresult import AsyncResult, Metadata, MetadataStore
    from .blobowners import BlobOwners
    from .collector import Collector
    from .client import Targets
    from .hub import Jobs
    from .tasks import BaseTask
    from .view import DirectView


class ClientParts(Protocol):
    # --- from Client ---------------------------------------------------------------
    settings: Settings
    names: Names
    client_id: str
    block: bool
    history: list[str]
    outstanding: set[str]
    results: dict[str, Any]
    _metadata: MetadataStore
    # Opened by _connect.
    ring: KeyRing
    registry: Registry
    records: Records
    history_store: History
    publisher: Publisher
    blob_owners: BlobOwners
    collector: Collector

    @property
    def ids(self) -> list[int]: ...

    def _connect(self) -> None: ...

    def direct_view(self, targets: Targets = "all") -> DirectView: ...

    def resolve_targets(self, targets: Targets) -> list[int]: ...

    def engine_queue_status(self, engine_id: int) -> dict[str, Any]: ...

    def check_size(self, payload: bytes, what: str) -> None: ...

    def pickle_request(self, request: Any, what: str) -> bytes: ...

    def _send_sealed(self, kind: str, payload: bytes, engine_ids: list[int],
                     header: dict[str, Any] | None = None, confirm: bool = True) -> list[str]: ...

    def wait(self, jobs: Jobs = None, timeout: float = -1, any_of: bool = False) -> bool: ...

    def _absorb(self, task_ids: list[str], records: list[TaskRecord] | None = None) -> None: ...

    def _track(self, result: AsyncResult) -> None: ...

    def metadata_for(self, task_id: str) -> Metadata: ...

    # --- from HubMethods -----------------------------------------------------------
    def task_ids_of(self, jobs: Jobs) -> list[str]: ...

    def _known(self, task_ids: list[str]) -> None: ...

    def db_query_limited(self, query: dict[str, Any], limit: int | None,
                         keys: list[str] | None = None) -> list[dict[str, Any]]: ...

    def purge_local_results(self, jobs: Jobs | str = (), targets: Any = ()) -> int: ...

    def purge_results(self, jobs: Jobs | str = (), targets: Any = ()) -> int: ...

    def _purge(self, jobs: Jobs | str, targets: Any, local: bool) -> int: ...

    # --- from TaskFarming ----------------------------------------------------------
    def submit_many(self, tasks: Sequence[BaseTask]) -> list[str]: ...

    def _submit_tasks(self, tasks: Sequence[BaseTask], confirm: bool) -> list[str]: ...

    def _submit_sealed(self, prepared: list[tuple[str, dict[str, Any], bytes]],
                       confirm: bool = True) -> list[str]: ...

    def _seal_run(self, prepared: list[tuple[str, dict[str, Any], bytes]],
                  scheme: str | None) -> tuple[list[NewTask], list[Outgoing]]: ...

    def _scheme(self, max_age_s: float = 2.0) -> str | None: ...
