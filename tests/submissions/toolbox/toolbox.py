"""A test submission whose methods misbehave on request."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

from starter_challenge.tracker import TrackerBase

LOADED_AT = time.time()


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("this exception cannot be printed")

    def __repr__(self):
        raise RuntimeError("nor represented")


class Toolbox(TrackerBase):
    def __init__(self, *args, **kwargs):
        self.init_args = list(args)
        self.init_kwargs = kwargs
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self.order = []
        self.lock = threading.Lock()
        self.not_callable = 42

    def tick(self, data):
        self.calls += 1

    def predict(self, asset, horizon, step=1):
        return [1.0] * (horizon // step)

    def echo(self, *args, **kwargs):
        return {"args": list(args), "kwargs": kwargs}

    def thread(self):
        return threading.get_ident(), threading.current_thread().name

    async def async_thread(self):
        return threading.get_ident(), threading.current_thread().name

    def frame(self):
        import pandas
        return pandas.DataFrame({"a": [1, 2]})

    def first(self, value):
        return value

    def only_x(self, x):
        return x

    def init(self):
        return {"args": self.init_args, "kwargs": self.init_kwargs}

    def loaded_at(self):
        return LOADED_AT

    def sleep(self, seconds, tag=None, mark=None):
        if mark is not None:  # tells a test the call has started (a file it waits for)
            with open(mark, "w") as started:
                started.write("started")
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(seconds)
        finally:
            with self.lock:
                self.active -= 1
                if tag is not None:
                    self.order.append(tag)
        return seconds

    async def async_sleep(self, seconds, tag=None):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.active -= 1
            if tag is not None:
                self.order.append(tag)
        return seconds

    def spin(self, seconds, tag=None):
        """Compute for `seconds` without sleeping (a model stuck in a loop)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        if tag is not None:
            self.order.append(tag)
        return seconds

    async def async_spin(self, seconds, tag=None):
        """The same in an `async def` that never awaits: it would hold any loop it ran on."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
        if tag is not None:
            self.order.append(tag)
        return seconds

    async def async_loop(self):
        """Where this coroutine runs: its thread, and whether the host's own loop runs there."""
        return threading.current_thread().name

    def stats(self):
        return {"max_active": self.max_active, "order": self.order, "calls": self.calls}

    def fail(self, message="boom"):
        raise ValueError(message)

    def exit(self):
        raise SystemExit(3)

    async def async_exit(self):
        raise SystemExit(4)

    def unencodable(self):
        return object()

    def big(self, size):
        return "x" * size

    def kill(self):
        os.kill(os.getpid(), signal.SIGKILL)  # the process dies (os._exit is contained)

    def os_exit(self):
        os._exit(1)

    def answer(self, delay=0.0, nested=0):
        """After `delay` seconds: [1.0], or `nested` one-element lists (a costly answer)."""
        time.sleep(delay)
        return [[0]] * nested if nested else [1.0]

    def flood(self, seconds):
        """Print as fast as possible for `seconds`: the host's output must stay bounded."""
        line = "x" * 1000 + "\n"
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sys.stdout.write(line * 100)
        sys.stdout.flush()

    def fork_child(self):
        """A child process that would outlive the host if stopped by PID alone."""
        return subprocess.Popen(["sleep", "600"]).pid

    def interrupt(self):
        raise KeyboardInterrupt

    def unprintable(self):
        raise Unprintable()

    def leave_thread(self):
        threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()

    @property
    def prop(self):
        raise AssertionError("a property must never be evaluated by the host")

    def _secret(self):
        return "secret"
