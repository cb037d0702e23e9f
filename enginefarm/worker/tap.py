"""The child's side of live output: what a running request prints goes to the supervisor as
it runs, in frames of their own beside the request's outcome.

Two rules keep the socket's framing whole:
- Frames are sent only by the flusher thread, and the outcome by the main thread outside
  ``run_command``, each under one lock. SIGINT raises KeyboardInterrupt only in the main thread
  and only inside ``run_command`` (child.interrupt_request), so no send is ever cut short.
- A request's output frames are sent only while it is open (between its capture being
  attached and its outcome being sent, under that lock), so the supervisor reads every one of
  them before the request's outcome, and none of them in another request's.

The frames carry the capture's own parts (``CappedWriter.parts``): the live text is always a
prefix of what the outcome's ``stdout``/``stderr`` hold, and is bounded by the same cap. The
text not sent yet when the request ends is not sent live: the outcome carries it, and a task
quicker than the flush interval writes nothing to Redis.
"""

from __future__ import annotations

import pickle
import queue
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection

from .commands import CappedWriter
from .rawio import send_raw

# A frame that starts with this byte is output; an outcome is a pickle (protocol 2 or later,
# which starts with 0x80).
OUTPUT_TAG = b"O"
# Output gathers this long before it is sent (a burst of prints is one frame)...
FLUSH_INTERVAL_S = 0.1
# ...unless this many bytes are waiting.
FLUSH_BYTES = 32 * 1024
_STEP_S = 0.02


def encode_output(chunks: dict[str, str]) -> bytes:
    """An output frame: stream name -> text printed since the last frame."""
    return OUTPUT_TAG + pickle.dumps(chunks, protocol=pickle.HIGHEST_PROTOCOL)


def is_output(frame: bytes) -> bool:
    return frame[:1] == OUTPUT_TAG


def decode_output(frame: bytes) -> dict[str, str]:
    """Raises: ValueError when the frame is not an output frame of text."""
    try:
        chunks = pickle.loads(memoryview(frame)[1:]) if is_output(frame) else None
    except Exception as exc:
        raise ValueError(f"not an output frame: {exc}") from exc
    if not isinstance(chunks, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                               for k, v in chunks.items()):
        raise ValueError("not an output frame")
    return chunks


class OutputTap:
    """Sends the running request's captured output to the supervisor, batched."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()  # one sender at a time; frames never interleave
        self._wake: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._armed = False  # a wake-up is on its way for what is waiting
        self._writers: tuple[CappedWriter, CappedWriter] | None = None
        self._sent = [0, 0]  # parts of each writer sent
        self._sent_size = [0, 0]

    def start(self) -> None:
        threading.Thread(target=self._flush_forever, name="output-tap", daemon=True).start()

    def attach(self, out: CappedWriter, err: CappedWriter) -> None:
        """The request's capture (called by ``run_command`` once it has one)."""
        out.on_write = err.on_write = self._written
        self._writers = (out, err)

    def captured(self) -> dict[str, str]:
        """The request's output so far, for an outcome made without ``run_command``'s."""
        writers = self._writers
        return {} if writers is None else {"stdout": writers[0].getvalue(), "stderr": writers[1].getvalue()}

    def finish(self, outcome: bytes, buffers: Sequence[memoryview] = ()) -> None:
        """Close the request and send its outcome, then its out-of-band buffers as raw
        bytes (the outcome gives their sizes); what was not sent live rides in the outcome."""
        with self._lock:
            self._writers = None
            self._sent, self._sent_size = [0, 0], [0, 0]
            # A wake-up cut short by an interrupt (flag set, none sent) ends with the request.
            self._armed = False
            self._conn.send_bytes(outcome)
            send_raw(self._conn.fileno(), buffers)

    def _written(self) -> None:
        # Called on the writer's thread, also inside user code: an interrupt between the two
        # steps costs at most an extra wake-up, never a lost one.
        if not self._armed:
            self._wake.put(None)
            self._armed = True

    def _flush_forever(self) -> None:
        while True:
            self._wake.get()
            deadline = time.monotonic() + FLUSH_INTERVAL_S
            while time.monotonic() < deadline and self._waiting() < FLUSH_BYTES:
                time.sleep(_STEP_S)
            try:
                self.flush()
            except (OSError, ValueError):
                return  # the supervisor is gone: this process ends with it

    def _waiting(self) -> int:
        writers = self._writers
        if writers is None:
            return 0
        return sum(w.size - sent for w, sent in zip(writers, self._sent_size))

    def flush(self) -> None:
        """Send what the open request printed since the last frame (nothing if it printed
        nothing or no request is open)."""
        with self._lock:
            self._armed = False
            writers = self._writers
            if writers is None:
                return
            chunks = {}
            for index, (name, writer) in enumerate(zip(("stdout", "stderr"), writers)):
                # Up to what the outcome holds once ``getvalue`` was called: a user's thread
                # that prints later must not put text in the live output that the record lacks.
                end = len(writer.parts) if writer.kept is None else writer.kept
                text = "".join(writer.parts[self._sent[index] : end])
                self._sent[index], self._sent_size[index] = max(end, self._sent[index]), writer.size
                if text:
                    chunks[name] = text
            if chunks:
                self._conn.send_bytes(encode_output(chunks))
