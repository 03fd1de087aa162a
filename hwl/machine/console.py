"""The stub's serial console (COM1): logged to a file, searchable with expect().

A reader thread drains the line into serial.log and an in-memory buffer from
the moment QEMU starts, so the guest never stalls on a full UART and nothing it
printed is lost, whether or not anyone is waiting for it.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path

import serial


class Console:
    """Reads a pyserial line in the background; ``expect`` waits for a pattern."""

    def __init__(self, port: serial.SerialBase, log_path: Path) -> None:
        self._port = port
        self._log = log_path.open("ab", buffering=0)
        self._buf = bytearray()
        self._pos = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._drain, name="hwl-console", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._closed:
            try:
                # every pyserial port class has in_waiting; the type stubs put it on Serial only
                data = self._port.read(max(1, int(getattr(self._port, "in_waiting", 1))))
            except (serial.SerialException, OSError, TypeError, AttributeError):
                break  # the port closed under us: QEMU went away or close() ran
            if data:
                self._log.write(data)
                with self._cond:
                    self._buf += data
                    self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def expect(self, pattern: str | re.Pattern[bytes], timeout: float) -> re.Match[bytes] | None:
        """Wait for ``pattern`` in output not yet consumed; None on timeout or close."""
        regex = re.compile(pattern.encode()) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = regex.search(self._buf, self._pos)
                if m:
                    self._pos = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return None
                self._cond.wait(left)

    def text(self) -> str:
        """Everything the stub printed so far."""
        with self._cond:
            return self._buf.decode(errors="replace")

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(serial.SerialException, OSError):
            self._port.close()
        self._thread.join(timeout=2)
        self._log.close()
