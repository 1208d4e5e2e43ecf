"""A real S3-protocol server for the tests: moto's server on 127.0.0.1 with
SigV4 checking on (the first calls create an IAM user whose keys the tests
then use), and a small loopback proxy in front of it that can inject
503 SlowDown, 500 or 502 answers, stall connections, or refuse them."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# The IAM calls made before authentication starts: create_user,
# create_access_key, put_user_policy.
NO_AUTH_CALLS = 3
POLICY = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    proc: subprocess.Popen

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            AWS_ACCESS_KEY_ID=self.access_key,
            AWS_SECRET_ACCESS_KEY=self.secret_key,
            AWS_REGION="us-east-1",
            AWS_ENDPOINT_URL=self.endpoint,
        )
        env.pop("AWS_SESSION_TOKEN", None)
        env.update(extra)
        return env

    def client(self, endpoint: str | None = None):  # noqa: ANN201 (boto3 has no stubs here)
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=endpoint or self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_server() -> S3Server:
    import boto3

    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(NO_AUTH_CALLS))
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start on port {port}") from None
            time.sleep(0.1)
    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
        region_name="us-east-1",
    )
    iam.create_user(UserName="ckpt")
    key = iam.create_access_key(UserName="ckpt")["AccessKey"]
    iam.put_user_policy(UserName="ckpt", PolicyName="all", PolicyDocument=POLICY)
    return S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], proc)


def server_reachable(endpoint: str) -> bool:
    try:
        urllib.request.urlopen(endpoint, timeout=2)
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


class FaultProxy:
    """Forwards TCP connections from a loopback port to the server. While
    `slowdown` > 0, each new request (one per connection: the proxy asks for
    `Connection: close`) is answered 503 SlowDown instead, and `slowdown` is
    decremented; likewise `errors`, a list of HTTP statuses (500, 502) to
    answer the next requests with, one each. While `stall` > 0, each new
    connection is held open without an answer, its request read at 64 bytes
    a second (a transfer too slow to finish), until the client gives up; the
    count of those is `stalled`. `down()` closes the listening socket and every open
    connection (the server looks stopped); `up()` listens again on the same
    port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.slowdown = 0
        self.injected = 0
        self.errors: list[int] = []
        self.stall = 0
        self.stalled = 0
        self.requests = 0
        self.bytes_up = 0  # bytes forwarded from clients to the server
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.up()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    ERRORS = {  # noqa: RUF012
        500: (b"Internal Server Error", b"InternalError", b"We encountered an internal error."),
        502: (b"Bad Gateway", b"", b""),
        503: (b"Slow Down", b"SlowDown", b"Please reduce your request rate."),
    }

    def _answer(self, conn: socket.socket, status: int) -> None:
        reason, code, message = self.ERRORS[status]
        # A gateway's 502 is not S3's XML.
        body = (
            b"<Error><Code>" + code + b"</Code><Message>" + message + b"</Message></Error>"
            if code
            else b"bad gateway: the upstream closed the connection"
        )
        ctype = b"application/xml" if code else b"text/plain"
        try:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 %d " % status
                + reason
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
        except OSError:
            pass
        conn.close()

    def _trickle(self, conn: socket.socket) -> None:
        try:
            while conn.recv(64):
                time.sleep(1)
        except OSError:
            pass
        with self._lock:
            self.stalled += 1
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.append(conn)
            self.requests += 1
            status = 0
            if self.slowdown > 0:
                self.slowdown -= 1
                status = 503
            elif self.errors:
                status = self.errors.pop(0)
            if status:
                self.injected += 1
            stall = not status and self.stall > 0
            if stall:
                self.stall -= 1
        if status:
            self._answer(conn, status)
            return
        if stall:
            self._trickle(conn)
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            conn.close()
            return
        with self._lock:
            self._conns.append(upstream)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(1 << 16):
                    dst.sendall(data)
                    if src is conn:
                        with self._lock:
                            self.bytes_up += len(data)
            except OSError:
                pass
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        t = threading.Thread(target=pump, args=(upstream, conn), daemon=True)
        t.start()
        pump(conn, upstream)
        t.join()
        conn.close()
        upstream.close()
