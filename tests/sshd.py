"""A real OpenSSH server on 127.0.0.1 for tests and benchmarks (no mocks): `Sshd`.

    with Sshd.start(tmp_path) as server:          # raises SshdUnavailable when it cannot
        env = {"SYMWATCH_SSH": server.ssh_command}  # `ssh -F <its client config>`
        ... ssh://symwatch-test ...                 # the host alias its config defines

Everything lives in one temporary directory: a host key and a client key (ssh-keygen), an
`sshd_config` (HostKey, AuthorizedKeysFile, PidFile, StrictModes no, UsePAM no, only public-key
logins; root may log in with a key, as tests run as root in CI), a `known_hosts` holding the
host key (so the client needs no `StrictHostKeyChecking=no`), and a client `ssh_config` with
the alias `symwatch-test`. `sshd -D -e` runs in the foreground as a child, on a free port;
`close()` stops it. Extra sshd settings (e.g. `AllowTcpForwarding no`) go in `settings`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping

from symwatch.core.processes import free_port

SSHD_PATHS = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/usr/bin/sshd")
HOST_ALIAS = "symwatch-test"
START_TIMEOUT_S = 10.0


class SshdUnavailable(RuntimeError):
    """The machine lacks sshd, ssh or ssh-keygen, or sshd would not start: tests skip."""


def find_sshd() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    return next((p for p in SSHD_PATHS if os.access(p, os.X_OK)), None)


def missing_tools() -> list[str]:
    """The OpenSSH programs this machine lacks (empty when a test can run)."""
    missing = [] if find_sshd() else ["sshd (openssh-server)"]
    missing += [tool for tool in ("ssh", "ssh-keygen") if shutil.which(tool) is None]
    return missing


def keygen(path: Path) -> Path:
    """A new ed25519 key pair at `path` (and `path`.pub), no passphrase."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "symwatch-test",
                    "-f", str(path)], check=True, stdin=subprocess.DEVNULL, timeout=30,
                   capture_output=True)
    return path


class Sshd:
    """See the module docstring."""

    def __init__(self, root: Path, proc: subprocess.Popen[bytes], port: int, *,
                 client_key: Path, ssh_config: Path, log: Path) -> None:
        self.root = root
        self.proc = proc
        self.port = port
        self.host = HOST_ALIAS
        self.client_key = client_key
        self.ssh_config = ssh_config
        self.log = log

    @property
    def ssh_command(self) -> str:
        """The client command line for $SYMWATCH_SSH (its config names the key and port)."""
        return f"ssh -F {self.ssh_config}"

    @property
    def target(self) -> str:
        return f"ssh://{HOST_ALIAS}"

    @classmethod
    def start(cls, workdir: str | os.PathLike[str] | None = None, *,
              settings: Mapping[str, str] | None = None) -> Sshd:
        missing = missing_tools()
        if missing:
            raise SshdUnavailable("not installed: " + ", ".join(missing)
                                  + " (tests/setup.sh installs them)")
        sshd = find_sshd()
        assert sshd is not None
        root = Path(tempfile.mkdtemp(prefix="sshd-", dir=workdir))
        os.chmod(root, 0o700)
        if os.geteuid() == 0:
            # sshd's privilege separation needs this empty directory when started as root.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        host_key = keygen(root / "host_ed25519")
        client_key = keygen(root / "client_ed25519")
        authorized = root / "authorized_keys"
        authorized.write_text(client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        port = free_port()
        config = {
            "Port": str(port), "ListenAddress": "127.0.0.1", "HostKey": str(host_key),
            "PidFile": str(root / "sshd.pid"), "AuthorizedKeysFile": str(authorized),
            "StrictModes": "no", "UsePAM": "no", "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no", "PubkeyAuthentication": "yes",
            "PermitRootLogin": "prohibit-password", "AcceptEnv": "SYMWATCH_*",
            "AllowTcpForwarding": "yes", "AllowStreamLocalForwarding": "yes",
            "PrintMotd": "no", "LogLevel": "VERBOSE", "MaxStartups": "100",
            "MaxSessions": "100",
        }
        config.update(settings or {})
        sshd_config = root / "sshd_config"
        sshd_config.write_text("".join(f"{k} {v}\n" for k, v in config.items()))
        known_hosts = root / "known_hosts"
        host_pub = host_key.with_suffix(".pub").read_text().split()
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
        ssh_config = root / "ssh_config"
        ssh_config.write_text(
            f"Host {HOST_ALIAS} 127.0.0.1\n"
            f"  HostName 127.0.0.1\n  Port {port}\n  User {_user()}\n"
            f"  IdentityFile {client_key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known_hosts}\n  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n  CheckHostIP no\n"
            "  BatchMode yes\n  LogLevel ERROR\n  ControlMaster no\n  ControlPath none\n")
        log = root / "sshd.log"
        with open(log, "wb") as log_fh:
            proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(sshd_config)],
                                    stdin=subprocess.DEVNULL, stdout=log_fh,
                                    stderr=subprocess.STDOUT)
        server = cls(root, proc, port, client_key=client_key, ssh_config=ssh_config, log=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                text = log.read_text(errors="replace").strip()
                server.close()
                raise SshdUnavailable(f"sshd exited at start ({proc.returncode}): {text[-300:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                    s.settimeout(2.0)
                    if s.recv(4).startswith(b"SSH-"):
                        return server
            except OSError:
                time.sleep(0.05)
        server.close()
        raise SshdUnavailable(f"sshd did not listen on 127.0.0.1:{port} within "
                              f"{START_TIMEOUT_S:g} s")

    def wrong_key_command(self) -> str:
        """A client command line whose key the server does not authorise."""
        other = keygen(self.root / "stranger_ed25519")
        config = self.root / "ssh_config_stranger"
        config.write_text(self.ssh_config.read_text().replace(str(self.client_key), str(other)))
        return f"ssh -F {config}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        from symwatch.core.processes import end_process

        end_process(self.proc, 5.0)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Sshd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
