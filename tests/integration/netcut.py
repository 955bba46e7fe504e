"""A TCP proxy whose port can be black-holed (a network cut without FIN or RST), for the
chaos suite's network cut of the source and the postgres destination's cut of the target.

NOTES: cut() changes the loopback device's root qdisc with tc (needs root and iproute2,
scripts/setup.sh); heal() and close() undo it. tc_usable() says why it cannot be used
here, for a skip. One cut at a time: the tests that cut run on one xdist worker, one
after another (marker machine_wide and the chaos suite, tests/conftest.py).
"""

import os
import socket
import subprocess
import threading


class Proxy:
    """Forwards 127.0.0.1:port to the server's port, both ways, one thread pair per
    connection. cut() black-holes its port on the loopback device with tc (packets to or
    from it are dropped: no FIN, no RST, like a cable pulled), heal() ends that."""

    def __init__(self, target_port):
        self.target = target_port
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.cut_on = False
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(("127.0.0.1", self.target), timeout=10)
                s.settimeout(None)
            except OSError:
                c.close()
                continue
            for a, b in ((c, s), (s, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _tc(self, *args, check=True):
        r = subprocess.run(["tc"] + list(args), capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError("tc %s: %s" % (" ".join(args), r.stderr.strip()))
        return r

    def cut(self):
        # An htb qdisc on lo: everything goes through class 1:1 (100 Gbit/s, unshaped in
        # practice); packets to or from the proxy's port go to class 1:2, whose pfifo has
        # room for no packet, so every one of them is dropped. (A one-packet queue let the
        # first packet after the cut through, and at 8 bit/s one more a minute: an ACK that
        # leaked restarted the sender's retransmission clock, and a cut that TCP should
        # notice in 30 s took 75 s in CI.) Only htb, pfifo and u32 are needed (no netem or
        # drop action, which a kernel may lack). Other loopback traffic goes on as before.
        self._tc("qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "1")
        self.cut_on = True
        self._tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate",
                 "100gbit")
        self._tc("class", "add", "dev", "lo", "parent", "1:", "classid", "1:2", "htb", "rate",
                 "8bit", "ceil", "8bit", "burst", "1", "cburst", "1")
        self._tc("qdisc", "add", "dev", "lo", "parent", "1:2", "handle", "20:", "pfifo", "limit",
                 "0")
        for match in ("dport", "sport"):
            self._tc("filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1",
                     "u32", "match", "ip", match, str(self.port), "0xffff", "flowid", "1:2")

    def heal(self):
        if self.cut_on:
            self._tc("qdisc", "del", "dev", "lo", "root", check=False)
            self.cut_on = False

    def close(self):
        self.heal()
        self._stop = True
        self.lsock.close()


def tc_usable():
    """None if tc can change the loopback device's qdisc here, else why not."""
    try:
        r = subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True)
    except OSError as e:
        return "tc is not installed (%s)" % e
    if r.returncode != 0:
        return "tc does not work: %s" % r.stderr.strip()
    if "noqueue" not in r.stdout:
        return "the loopback device already has a qdisc: %s" % r.stdout.strip()
    if os.geteuid() != 0:
        return "changing the loopback device's qdisc needs root"
    return None
