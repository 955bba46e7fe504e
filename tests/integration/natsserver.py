"""A real NATS server with JetStream for the tests (Debian's nats-server), and a minimal
client of the NATS protocol to read a JetStream stream back.

NOTES: NatsServer starts `nats-server -js` on a free loopback port with a temporary store
directory; stop() (SIGTERM, or kill=True for SIGKILL) and start() again keep the port and
the store, so a test can restart the server under a running pipeline. NatsClient speaks
the text protocol (CONNECT, SUB, PUB with a reply subject, MSG/HMSG, PING/PONG) just
enough for JetStream's request/reply API: stream info and getting messages by sequence
($JS.API.STREAM.MSG.GET), which returns each message's subject, headers and data. No
third-party Python package is needed.
"""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from pgserver import free_port

NATS_SERVER = shutil.which("nats-server") or "/usr/bin/nats-server"


class NatsServer:
    def __init__(self):
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="walrelay-nats-")
        self.store = os.path.join(self.tmp, "js")
        self.log = os.path.join(self.tmp, "nats-server.log")
        self.proc = None

    @property
    def url(self):
        return "nats://127.0.0.1:%d" % self.port

    def start(self, timeout=30):
        assert self.proc is None or self.proc.poll() is not None, "nats-server already running"
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(
                [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.store,
                 "-n", "walrelay-test"],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while True:
            try:
                with NatsClient(self.port, timeout=2) as c:
                    c.request("$JS.API.INFO", b"")
                return self
            except (OSError, AssertionError):
                if self.proc.poll() is not None:
                    raise AssertionError("nats-server exited with %s:\n%s" % (
                        self.proc.returncode, self.log_tail()))
                if time.monotonic() > end:
                    raise AssertionError("nats-server did not answer within %ss:\n%s" % (
                        timeout, self.log_tail()))
                time.sleep(0.1)

    def stop(self, kill=False):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            self.proc.wait(30)

    def cleanup(self):
        self.stop(kill=True)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def log_tail(self, n=40):
        try:
            with open(self.log, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def client(self):
        return NatsClient(self.port)


class NatsClient:
    """One connection; request() sends a message with a reply subject and returns the
    answer's (headers text, payload)."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.n = 0
        info = self._line()
        assert info.startswith(b"INFO "), info
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
                          b'"no_responders":true,"protocol":1}\r\nSUB _INBOX.t.* 1\r\nPING\r\n')
        while True:
            line = self._line()
            if line == b"PONG":
                break
            assert not line.startswith(b"-ERR"), line

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def _fill(self):
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise OSError("nats-server closed the connection")
        self.buf += chunk

    def _line(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _take(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def request(self, subject, payload):
        self.n += 1
        reply = "_INBOX.t.%d" % self.n
        if isinstance(payload, str):
            payload = payload.encode()
        self.sock.sendall(b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(),
                                                      len(payload), payload))
        while True:
            line = self._line()
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
                continue
            if line.startswith(b"-ERR"):
                raise AssertionError("nats-server: %r" % line)
            parts = line.split()
            if parts[0] == b"MSG":
                data = self._take(int(parts[-1]))
                hdrs = b""
            elif parts[0] == b"HMSG":
                hlen, total = int(parts[-2]), int(parts[-1])
                raw = self._take(total)
                hdrs, data = raw[:hlen], raw[hlen:]
            else:
                continue
            if parts[1].decode() == reply:
                if b"503" in hdrs.split(b"\r\n")[0]:
                    raise AssertionError("no responders for %s" % subject)
                return hdrs.decode("utf-8", "replace"), data

    def api(self, subject, body=None):
        _, data = self.request(subject, json.dumps(body).encode() if body is not None else b"")
        return json.loads(data)

    def stream_info(self, stream):
        return self.api("$JS.API.STREAM.INFO.%s" % stream)

    def messages(self, stream):
        """Every message of the stream, in order: [{"seq", "subject", "headers" (dict),
        "data" (bytes), "json"}]."""
        info = self.stream_info(stream)
        assert "error" not in info, info
        st = info["state"]
        out = []
        for seq in range(st["first_seq"], st["last_seq"] + 1):
            r = self.api("$JS.API.STREAM.MSG.GET.%s" % stream, {"seq": seq})
            if "error" in r:
                if r["error"].get("err_code") == 10037:  # deleted
                    continue
                raise AssertionError("getting message %d of %s: %r" % (seq, stream, r))
            m = r["message"]
            headers = {}
            if m.get("hdrs"):
                for hl in base64.b64decode(m["hdrs"]).decode().split("\r\n")[1:]:
                    if ":" in hl:
                        k, v = hl.split(":", 1)
                        headers[k.strip()] = v.strip()
            data = base64.b64decode(m.get("data") or "")
            out.append({"seq": m["seq"], "subject": m["subject"], "headers": headers,
                        "data": data, "json": json.loads(data) if data else None})
        return out
