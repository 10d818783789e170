"""Runs moto (the AWS API emulator) on a free loopback port for the Rust integration tests.

Prints exactly one line to stdout, `moto listening on http://127.0.0.1:PORT`, once the server
answers requests; then blocks on stdin and stops when stdin reaches EOF. The test process holds
the other end of that pipe, so moto goes away with it, even when the tests crash or are killed.

Usage: .venv/bin/python tests/moto_server.py   (see tests/support/moto.rs)
"""

import collections
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request

from moto.dynamodb.responses import DynamoHandler
from moto.server import ThreadedMotoServer

READY_TIMEOUT_SECONDS = 30


class FifoLock:
    """A reentrant lock granted in the order it was asked for.

    Python's own locks let a thread that arrives as the lock is released take it before one
    that has waited: with a sweep's 64 GetItems in flight (and other tests' requests), an index
    Query waited past the AWS SDK's 5 s operation timeout on a loaded CI machine. In arrival
    order a request waits for those ahead of it only.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiting: collections.deque[threading.Event] = collections.deque()
        self._held = False
        self._owner: int | None = None
        self._depth = 0

    def __enter__(self) -> None:
        me = threading.get_ident()
        with self._mutex:
            if self._owner == me:
                self._depth += 1
                return
            if not self._held:
                self._held, self._owner, self._depth = True, me, 1
                return
            turn = threading.Event()
            self._waiting.append(turn)
        # Handed over by `__exit__`, still held: nobody else can take it meanwhile.
        turn.wait()
        with self._mutex:
            self._owner, self._depth = me, 1

    def __exit__(self, *_exc: object) -> None:
        with self._mutex:
            self._depth -= 1
            if self._depth:
                return
            self._owner = None
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._held = False


def serialize_dynamodb() -> None:
    """Runs one DynamoDB request at a time, as atomic as DynamoDB's own.

    DynamoDB applies each request atomically: a PutItem conditional on `version = :v` checks
    and writes as one, so of concurrent writers holding one version exactly one wins. moto's
    threaded server runs each request on its own thread, and its `Table.put_item` reads the
    current item, parses the condition, then stores: two requests interleaved there both pass
    the check (the CI run of commit a697ebc saw two of eight concurrent `If-Match` PATCHes win).
    Holding one lock around each DynamoDB action closes that window; moto's Python runs one
    thread at a time under the GIL anyway, so little is lost. The lock is taken in arrival
    order (`FifoLock`).
    """
    lock = FifoLock()
    call_action = DynamoHandler.call_action

    def serialized(self):  # type: ignore[no-untyped-def]
        with lock:
            return call_action(self)

    DynamoHandler.call_action = serialized  # type: ignore[method-assign]


def wait_until_answering(url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer, even an error status, means the server is up
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def main() -> None:
    # werkzeug logs every request at INFO; keep stderr for real problems.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    # Port 0: the OS picks a free port and the server reports the one it bound, so there is no
    # window in which another process can take it.
    serialize_dynamodb()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # Some moto backends build URLs that point back at the server from this variable.
    os.environ["MOTO_PORT"] = str(port)
    url = f"http://{host}:{port}"
    wait_until_answering(f"{url}/moto-api/config")  # a read-only page

    sys.stdout.write(f"moto listening on {url}\n")
    sys.stdout.flush()
    # Nothing else may reach the pipe the test reads (it stops reading after that line, and a
    # full pipe would block moto): anything printed from now on goes to stderr.
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    try:
        sys.stdin.buffer.read()  # returns at EOF: the test process closed the pipe or exited
    except KeyboardInterrupt:
        pass
    # Not server.stop() nor a normal return: those wait for werkzeug's 0.5 s poll loop and the
    # interpreter's teardown, and moto holds nothing worth flushing. Exiting at once means no
    # moto is still around when the test run has finished.
    os._exit(0)


if __name__ == "__main__":
    main()
