"""A ZeroMQ socket driven straight from the event loop's reader callback.

zmq.asyncio wraps every send and receive in a Future and an event registration: at thousands of
messages a second that is a large part of the model owner's CPU. Here messages are received in a
reader callback on the socket's notification descriptor and handed to a function, and sends are
non-blocking calls; a send the socket cannot take now (its high-water mark reached) waits in a
queue for the socket to be writable. ZeroMQ's descriptor is edge-triggered: after every send, and
after every batch of receives, the socket's events are checked again so that nothing waits unseen.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import zmq

log = logging.getLogger("electra.ipc")
# Queued messages at most, each way, before ZeroMQ itself holds sends back.
HIGH_WATER_MARK = 100_000


class LoopSocket:
    def __init__(self, socket: zmq.Socket[Any], on_message: Callable[[list[zmq.Frame]], None]) -> None:
        self.socket = socket
        socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
        socket.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._fd = cast(int, socket.getsockopt(zmq.FD))
        self._backlog: deque[list[Any]] = deque()
        self._check_scheduled = False
        self._closed = False
        self._loop.add_reader(self._fd, self._ready)
        self._schedule_check()

    def send(self, frames: list[Any]) -> None:
        if self._closed:
            return
        if self._backlog:
            self._backlog.append(frames)
        else:
            try:
                self.socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                self._backlog.append(frames)
            except zmq.ZMQError as exc:  # ROUTER_MANDATORY: the peer is gone
                log.debug("a message could not be sent: %s", exc)
        self._schedule_check()

    def _schedule_check(self) -> None:
        if not self._check_scheduled and not self._closed:
            self._check_scheduled = True
            self._loop.call_soon(self._ready)

    def _ready(self) -> None:
        self._check_scheduled = False
        if self._closed:
            return
        socket = self.socket
        while True:
            events = cast(int, socket.getsockopt(zmq.EVENTS))
            progressed = False
            if events & zmq.POLLOUT and self._backlog:
                frames = self._backlog[0]
                try:
                    socket.send_multipart(frames, zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    pass
                except zmq.ZMQError as exc:
                    log.debug("a queued message could not be sent: %s", exc)
                    self._backlog.popleft()
                else:
                    self._backlog.popleft()
                    progressed = True
            if events & zmq.POLLIN:
                try:
                    frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    pass
                else:
                    progressed = True
                    try:
                        self._on_message(frames)
                    except Exception:  # one bad message must not stop the socket
                        log.exception("a message could not be handled")
            if not progressed:
                return

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self.socket.close(0)
