"""Streams and events."""
from __future__ import annotations

import weakref

from ..driver.client import Client
from ..protocol import messages as m
from ..protocol.errors import CudaError

STREAM_NON_BLOCKING = 0x1
EVENT_BLOCKING_SYNC = 0x1
EVENT_DISABLE_TIMING = 0x2


def _destroy(client: Client, msg: m.Message) -> None:
    if client.broken is None and not client.channel.closed:
        try:
            client.post(msg)
        except CudaError:
            pass


class Stream:
    """An ordered queue of work on one device. Handle 0 is the legacy default stream."""

    def __init__(self, device, handle: int) -> None:
        self.device = device
        self.handle = handle
        self._finalizer = weakref.finalize(self, _destroy, device.client, m.StreamDestroy(handle)) if handle else None

    @classmethod
    def _create(cls, device, non_blocking: bool, priority: int) -> "Stream":
        flags = STREAM_NON_BLOCKING if non_blocking else 0
        reply = device.client.call(m.StreamCreate(device.remote_ordinal, flags, priority))
        assert isinstance(reply, m.StreamCreateReply)
        return cls(device, reply.stream)

    @classmethod
    def _legacy(cls, device) -> "Stream":
        return cls(device, 0)

    def __repr__(self) -> str:
        return f"<qcuda.Stream {self.handle} on device {self.device.ordinal}>"

    def synchronize(self) -> None:
        self.device.client.call(m.StreamSynchronize(self.handle, self.device.remote_ordinal))
        self.device.client.raise_deferred()

    def query(self) -> bool:
        """True when all work queued so far has run."""
        try:
            self.device.client.call(m.StreamQuery(self.handle, self.device.remote_ordinal))
        except CudaError as exc:
            if exc.code == 600:  # cudaErrorNotReady
                return False
            raise
        return True

    def wait(self, event: "Event") -> None:
        """Later work on this stream waits for `event`'s last recorded point."""
        self.device.client.post(m.StreamWaitEvent(self.handle, event.handle, 0))

    def record(self, event: "Event | None" = None) -> "Event":
        event = event or self.device.create_event()
        event.record(self)
        return event

    def add_callback(self, fn) -> None:
        """Call `fn(stream, status)` in this process once the work queued so far has run; later work waits for it."""
        self.device.client.add_callback(self.handle, self.device.remote_ordinal, lambda status: fn(self, status))

    def launch(self, kernel, grid, block, *args, shared_mem: int = 0) -> None:
        kernel.launch(grid, block, *args, shared_mem=shared_mem, stream=self)

    def destroy(self) -> None:
        if self._finalizer is not None and self._finalizer.detach() is not None:
            self.device.client.call(m.StreamDestroy(self.handle))


class Event:
    """A point in a stream, with a timestamp unless created with timing=False."""

    def __init__(self, device, handle: int) -> None:
        self.device = device
        self.handle = handle
        self._finalizer = weakref.finalize(self, _destroy, device.client, m.EventDestroy(handle))

    @classmethod
    def _create(cls, device, timing: bool, blocking_sync: bool) -> "Event":
        flags = (0 if timing else EVENT_DISABLE_TIMING) | (EVENT_BLOCKING_SYNC if blocking_sync else 0)
        reply = device.client.call(m.EventCreate(device.remote_ordinal, flags))
        assert isinstance(reply, m.EventCreateReply)
        return cls(device, reply.event)

    def record(self, stream: Stream | None = None) -> None:
        self.device.client.post(m.EventRecord(self.handle, stream.handle if stream is not None else 0))

    def synchronize(self) -> None:
        self.device.client.call(m.EventSynchronize(self.handle))
        self.device.client.raise_deferred()

    def query(self) -> bool:
        try:
            self.device.client.call(m.EventQuery(self.handle))
        except CudaError as exc:
            if exc.code == 600:
                return False
            raise
        return True

    def elapsed_ms(self, end: "Event") -> float:
        """Milliseconds from this event to `end` (both recorded and complete)."""
        reply = self.device.client.call(m.EventElapsed(self.handle, end.handle))
        assert isinstance(reply, m.EventElapsedReply)
        return reply.milliseconds

    def destroy(self) -> None:
        if self._finalizer.detach() is not None:
            self.device.client.call(m.EventDestroy(self.handle))
