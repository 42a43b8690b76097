"""A tracker that misbehaves in the way the FAULT environment variable names."""

import os
import signal
import socket
import threading
import time

from starter_challenge.tracker import TrackerBase

FAULT = os.environ.get("FAULT", "none")
DELAY = float(os.environ.get("FAULT_DELAY", "2.0"))


def _close_sockets() -> None:
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=int(name))
        except OSError:
            continue
        try:
            if sock.type == socket.SOCK_STREAM and sock.getpeername():
                sock.shutdown(socket.SHUT_RDWR)  # every connection, under the server's feet
        except OSError:
            pass
        finally:
            sock.detach()


class Faulty(TrackerBase):
    def __init__(self):
        self.calls = 0

    def tick(self, data):
        pass

    def predict(self, asset, horizon, step=1):
        self.calls += 1
        if FAULT == "hang":
            threading.Event().wait()  # blocked forever in plain Python
        if FAULT == "sleep":
            time.sleep(DELAY)
        if FAULT == "sometimes" and self.calls % 3 == 0:
            time.sleep(DELAY)
        if FAULT == "raise":
            raise ValueError("the model is broken")
        if FAULT == "unencodable":
            return object()
        if FAULT == "oversized":
            return "x" * 1_000_000
        if FAULT == "exit":
            os.kill(os.getpid(), signal.SIGKILL)  # the host dies mid-call
        if FAULT == "close":
            _close_sockets()
            time.sleep(0.05)
        return [1.0] * (horizon // step)
