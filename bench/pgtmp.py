"""A throwaway PostgreSQL 15 for benchmarks: temp dir, free port, wal_level=logical.

Runs the server as the `postgres` user when we are root (initdb refuses root).
"""
import os
import shutil
import socket
import subprocess
import tempfile

PGBIN = "/usr/lib/postgresql/15/bin"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TmpPostgres:
    def __init__(self, extra_conf=""):
        self.dir = tempfile.mkdtemp(prefix="walrelay-bench-pg-")
        os.chmod(self.dir, 0o755)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run([f"{PGBIN}/initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                   "--no-sync", "-E", "UTF8", "--locale=C"])
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(f"""
port = {self.port}
listen_addresses = '127.0.0.1'
unix_socket_directories = '{self.dir}'
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
shared_buffers = 256MB
max_wal_size = 4GB
{extra_conf}
""")
        self._run([f"{PGBIN}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "log"),
                   "-w", "start"])
        self.conninfo = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def _run(self, cmd):
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

    def stop(self):
        try:
            self._run([f"{PGBIN}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
