"""A TLS front for the cascade's gRPC service: nginx terminates TLS and forwards with ``grpc_pass``
to Ray Serve's gRPC proxy, which binds only an insecure port.

``render_nginx_conf`` fills the template shipped in the package (``serving/ops/tls_nginx.conf``);
``nginx_front`` runs nginx with it in the foreground (tests, one machine); ``self_signed_cert``
makes a certificate for development. As a script it renders a config::

    python -m serving.ops.tls --listen 0.0.0.0:9443 --upstream 127.0.0.1:9000 \\
        --cert cert.pem --key key.pem --out /srv/cascade-tls/nginx.conf

No Ray imports here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from string import Template
from typing import Optional

from serving.ops.local import wait_for

TEMPLATE = "tls_nginx.conf"
PLACEHOLDERS = ("listen", "upstream", "cert", "key", "prefix")
_KEEP = "# ---- rendering keeps what follows this line ----\n"  # the template's own header is above it
_ADDRESS = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")


class _ConfTemplate(Template):
    """Only ``${name}`` is a placeholder: nginx's own ``$var`` and ``$$`` stay as written."""

    pattern = r"""
    \$(?:
      (?P<escaped>(?!))          |
      (?P<named>(?!))            |
      {(?P<braced>[a-z_]+)}      |
      (?P<invalid>(?!))
    )
    """


def template_text() -> str:
    """The template shipped next to this module (package data, so found from an installed package too)."""
    return (Path(__file__).parent / TEMPLATE).read_text()


def _check_address(what: str, value: str) -> str:
    if not _ADDRESS.match(value):
        raise ValueError(f"{what} must be host:port, got {value!r}")
    return value


def _check_path(what: str, value: Path) -> str:
    s = str(Path(value).absolute())
    if any(c in s for c in '"$;{}\n\r\\'):
        raise ValueError(f"{what} path must not contain quotes, $, ;, braces, backslashes or newlines: {s!r}")
    return s


def render_nginx_conf(listen: str, upstream: str, cert: Path, key: Path, prefix: Path) -> str:
    """The nginx config for a TLS listener on ``listen`` forwarding gRPC to ``upstream`` (Serve's
    plaintext gRPC proxy). Paths are made absolute; ``prefix`` holds nginx's pid, logs and temp
    files and must exist when nginx starts."""
    values = {
        "listen": _check_address("listen", listen),
        "upstream": _check_address("upstream", upstream),
        "cert": _check_path("cert", cert),
        "key": _check_path("key", key),
        "prefix": _check_path("prefix", prefix).rstrip("/") or "/",
    }
    body = template_text().split(_KEEP, 1)[1]
    return (
        f"# Rendered by `python -m serving.ops.tls` from serving/ops/{TEMPLATE}: edit the template, not this file.\n"
        + _ConfTemplate(body).substitute(values)
    )


def find_nginx() -> Optional[str]:
    """Path of the nginx binary (PATH, then the usual sbin directories, which root's PATH may lack), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(p, os.X_OK):
            return p
    return None


def self_signed_cert(dir: Path, hosts: Sequence[str] = ("localhost", "127.0.0.1"), days: int = 30) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 server certificate for ``hosts`` (DNS names or IP addresses, all in
    subjectAltName), written as ``dir/cert.pem`` and ``dir/key.pem`` (0600). For development and
    tests: a client trusts it by using ``cert.pem`` as its root CA (``--tls-ca``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "cascade")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = dir / "cert.pem", dir / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def _probe_host_port(listen: str) -> tuple[str, int]:
    host, port = listen.rsplit(":", 1)
    host = host.strip("[]")
    if host in ("0.0.0.0", "*", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, int(port)


def nginx_test(conf: Path, prefix: Path, nginx: Optional[str] = None) -> subprocess.CompletedProcess:
    """``nginx -t`` on a config (returns the completed process; check ``returncode``)."""
    nginx = nginx or find_nginx()
    if nginx is None:
        raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx-light)")
    return subprocess.run(
        [nginx, "-t", "-q", "-p", str(prefix), "-c", str(conf)], capture_output=True, text=True, timeout=30
    )


@contextlib.contextmanager
def nginx_front(
    listen: str,
    upstream: str,
    cert: Path,
    key: Path,
    workdir: Path,
    timeout: float = 30.0,
    nginx: Optional[str] = None,
    config: Optional[str] = None,
) -> Iterator[Path]:
    """Run an nginx TLS front in the foreground: ``workdir`` gets the config (``nginx.conf``) and
    nginx's pid, logs and temp files (``config``: this text instead of the rendered one). Checks the config with ``nginx -t``, starts nginx, yields the
    config's path once the TLS port accepts connections, and on exit stops nginx (SIGQUIT: graceful,
    then SIGTERM, then SIGKILL) and waits for it."""
    nginx = nginx or find_nginx()
    if nginx is None:
        raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx-light)")
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "nginx.conf"
    conf.write_text(config if config is not None else render_nginx_conf(listen, upstream, cert, key, workdir))
    checked = nginx_test(conf, workdir, nginx)
    if checked.returncode != 0:
        raise RuntimeError(f"nginx -t rejected {conf}:\n{checked.stderr}")
    out = open(workdir / "nginx.out", "w")
    proc = subprocess.Popen(
        [nginx, "-p", str(workdir), "-c", str(conf), "-g", "daemon off;"],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    host, port = _probe_host_port(listen)

    def _log() -> str:
        text = (workdir / "nginx.out").read_text()
        if (workdir / "error.log").exists():
            text += (workdir / "error.log").read_text()
        return text[-4000:]

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {proc.returncode} before listening on {listen}:\n{_log()}")
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return True
        except OSError:
            return False

    try:
        try:
            wait_for(listening, timeout=timeout, interval=0.05, what=f"nginx to listen on {listen}")
        except TimeoutError as e:
            raise TimeoutError(f"{e}:\n{_log()}") from None
        yield conf
    finally:
        for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            proc.send_signal(sig)
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        out.close()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m serving.ops.tls",
        description="Render the nginx config of a TLS front for the cascade's gRPC port.",
    )
    p.add_argument("--listen", default="0.0.0.0:9443", help="TLS address nginx listens on (default %(default)s)")
    p.add_argument("--upstream", default="127.0.0.1:9000", help="Serve's plaintext gRPC proxy (default %(default)s)")
    p.add_argument("--cert", type=Path, help="PEM certificate (chain) for the listener")
    p.add_argument("--key", type=Path, help="PEM private key of --cert")
    p.add_argument(
        "--self-signed",
        type=Path,
        metavar="DIR",
        help="make a self-signed dev certificate DIR/cert.pem + DIR/key.pem and use it",
    )
    p.add_argument(
        "--hosts",
        nargs="+",
        default=["localhost", "127.0.0.1"],
        help="names/IPs of the self-signed certificate (default: %(default)s)",
    )
    p.add_argument(
        "--prefix", type=Path, help="directory for nginx's pid, logs, temp files (default: --out's directory)"
    )
    p.add_argument("--out", type=Path, help="write the config here (created with --prefix); default: stdout")
    a = p.parse_args(argv)
    if a.self_signed:
        if a.cert or a.key:
            p.error("--self-signed makes the certificate: drop --cert/--key")
        a.cert, a.key = self_signed_cert(a.self_signed, a.hosts)
        print(f"self-signed certificate {a.cert} (clients: --tls-ca {a.cert}), key {a.key}", file=sys.stderr)
    if not (a.cert and a.key):
        p.error("give --cert and --key, or --self-signed DIR")
    prefix = a.prefix or (a.out.absolute().parent if a.out else None)
    if prefix is None:
        p.error("give --prefix (or --out, whose directory is then the prefix)")
    try:
        text = render_nginx_conf(a.listen, a.upstream, a.cert, a.key, prefix)
    except ValueError as e:
        p.error(str(e))
    if a.out is None:
        sys.stdout.write(text)
        return 0
    Path(prefix).mkdir(parents=True, exist_ok=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    nginx = find_nginx() or "nginx"
    print(
        f"wrote {a.out}; run: {nginx} -p {Path(prefix).absolute()} -c {a.out.absolute()} -g 'daemon off;'",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
