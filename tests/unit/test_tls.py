"""The TLS front's nginx config (serving/ops/tls_nginx.conf) and helpers; no nginx needed, except for
the `nginx -t` check, which gets nginx from the `nginx` fixture (tests/conftest.py: installed with
apt-get where it can be, as on CI) and is skipped only when nginx cannot be had."""

from __future__ import annotations

import re
import stat

import pytest

from serving.ops import tls
from serving.ops.tls import PLACEHOLDERS, nginx_test, render_nginx_conf, self_signed_cert, template_text
from tests.conftest import ROOT

EXAMPLE = ROOT / "cluster" / "tls" / "nginx-grpc-tls.conf"
EXAMPLE_ARGS = dict(
    listen="0.0.0.0:9443",
    upstream="127.0.0.1:9000",
    cert="/srv/cascade-tls/cert.pem",
    key="/srv/cascade-tls/key.pem",
    prefix="/srv/cascade-tls",
)


def _directives(conf: str) -> str:
    return "\n".join(line.split("#", 1)[0].strip() for line in conf.splitlines() if line.split("#", 1)[0].strip())


def test_every_placeholder_is_documented_and_filled(tmp_path):
    text = template_text()
    header, body = text.split(tls._KEEP)
    used = set(re.findall(r"\$\{(\w+)\}", body))
    assert used == set(PLACEHOLDERS)
    assert all(f"${{{name}}}" in header for name in PLACEHOLDERS)  # documented at the top
    conf = render_nginx_conf("127.0.0.1:9443", "127.0.0.1:9000", tmp_path / "c.pem", tmp_path / "k.pem", tmp_path)
    assert "${" not in conf and "$" not in _directives(conf)


def test_key_directives():
    d = _directives(render_nginx_conf(**EXAMPLE_ARGS))
    for line in [
        "listen 0.0.0.0:9443 ssl http2;",
        "server 127.0.0.1:9000;",
        "grpc_pass grpc://cascade_grpc;",
        'ssl_certificate "/srv/cascade-tls/cert.pem";',
        'ssl_certificate_key "/srv/cascade-tls/key.pem";',
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "client_max_body_size 1m;",
        "grpc_read_timeout 300s;",
        "grpc_send_timeout 300s;",
        "underscores_in_headers on;",
        'pid "/srv/cascade-tls/nginx.pid";',
        'error_log "/srv/cascade-tls/error.log" warn;',
        'access_log "/srv/cascade-tls/access.log" combined;',
        "error_page 502 503 = @grpc_unavailable;",
        "add_header grpc-status 14 always;",
    ]:
        assert line in d.splitlines(), line
    assert "http2 on;" not in d  # nginx 1.25.1+ only; Debian 12 ships 1.22
    assert "daemon" not in d  # given on the command line (-g 'daemon off;')
    for temp in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):  # nothing under /var
        assert f'{temp}_temp_path "/srv/cascade-tls/{temp}_temp";' in d
    assert "authorization" not in d.lower() and "log_format" not in d  # the combined format logs no auth header


def test_the_example_in_cluster_is_current():
    assert EXAMPLE.read_text() == render_nginx_conf(**EXAMPLE_ARGS), (
        "stale: python -m serving.ops.tls --listen 0.0.0.0:9443 --upstream 127.0.0.1:9000 --cert /srv/cascade-tls/cert.pem "
        "--key /srv/cascade-tls/key.pem --prefix /srv/cascade-tls > cluster/tls/nginx-grpc-tls.conf"
    )


@pytest.mark.parametrize(
    "field,value",
    [
        ("listen", "9443"),
        ("listen", "0.0.0.0:9443; evil"),
        ("upstream", "a b:1"),
        ("cert", '/x/"c.pem'),
        ("key", "/x/$k.pem"),
        ("prefix", "/x;y"),
    ],
)
def test_bad_values_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        render_nginx_conf(**{**EXAMPLE_ARGS, field: value})


def test_self_signed_cert(tmp_path):
    from cryptography import x509

    cert, key = self_signed_cert(tmp_path, hosts=["localhost", "127.0.0.1", "cascade.example"])
    c = x509.load_pem_x509_certificate(cert.read_bytes())
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "cascade.example"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert c.issuer == c.subject
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and b"PRIVATE KEY" in key.read_bytes()


def test_cli_renders_with_a_self_signed_cert(tmp_path, capsys):
    out = tmp_path / "front" / "nginx.conf"
    assert tls.main(["--listen", "127.0.0.1:9443", "--self-signed", str(tmp_path / "certs"), "--out", str(out)]) == 0
    conf = out.read_text()
    assert f'ssl_certificate "{tmp_path / "certs" / "cert.pem"}";' in conf
    assert f'pid "{out.parent}/nginx.pid";' in conf and "server 127.0.0.1:9000;" in conf
    assert "-g 'daemon off;'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tls.main(["--listen", "127.0.0.1:9443"])  # no certificate


def test_nginx_accepts_the_rendered_config(nginx, tmp_path):
    cert, key = self_signed_cert(tmp_path / "certs")
    conf = tmp_path / "nginx.conf"
    conf.write_text(render_nginx_conf("127.0.0.1:9443", "127.0.0.1:9000", cert, key, tmp_path))
    out = nginx_test(conf, tmp_path, nginx)
    assert out.returncode == 0, out.stderr
