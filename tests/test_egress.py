"""The egress policy: no loopback, private or metadata address for a user's URL unless allowed,
checked after DNS and at every redirect; downloads limited on the bytes read."""

import http.server
import threading

import pytest

from builder.egress import EgressPolicy, EgressRefused, fetch
from dreambuild.errors import InputError


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/x",
        "http://10.1.2.3/x",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "http://[::ffff:127.0.0.1]/x",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://localhost:5000/shutdown",
        "http://metadata.google.internal/",
        "http://224.0.0.1/",
    ],
)
def test_non_public_addresses_are_refused_by_default(url):
    with pytest.raises(EgressRefused, match="non-public address"):
        EgressPolicy().check_static(url, "webhook")
    with pytest.raises(EgressRefused):
        EgressPolicy().check(url, "webhook")


def test_the_allow_list_admits_hosts_and_networks():
    policy = EgressPolicy(("127.0.0.1", "10.0.0.0/8", "files.internal"))
    for url in ("http://127.0.0.1:9/x", "http://10.200.0.1/x", "http://files.internal/x"):
        policy.check_static(url, "input")
    policy.check("http://127.0.0.1:9/x", "input")  # resolved: still allowed
    with pytest.raises(EgressRefused):
        policy.check_static("http://192.168.0.1/x", "input")
    EgressPolicy().check_static("https://93.184.216.34/photos.zip", "input")  # a public address


def test_names_are_judged_by_what_they_resolve_to():
    with pytest.raises(EgressRefused, match=r"localhost.* \(127.0.0.1\)|localhost"):
        EgressPolicy().check("http://localhost/x", "input")
    with pytest.raises(EgressRefused, match="cannot resolve"):
        EgressPolicy().check("http://no-such-host.invalid/x", "input")


class _Photos(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the same five bytes."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"PK\x03\x04z")


@pytest.fixture
def files():
    """A file server on loopback: /photos.zip, /big (no Content-Length), /to?<url> redirects."""

    class Handler(_Photos):
        protocol_version = "HTTP/1.0"

        def do_GET(self):
            if self.path.startswith("/to?"):
                self.send_response(302)
                self.send_header("Location", self.path[4:])
                self.end_headers()
            elif self.path == "/big":
                self.send_response(200)
                self.end_headers()
                for _ in range(8):
                    self.wfile.write(b"x" * 2**20)
            else:
                super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_fetch_checks_every_redirect_and_the_bytes_read(tmp_path, files):
    allowed = EgressPolicy(("127.0.0.1",))
    assert fetch(f"{files}/to?/photos.zip", tmp_path / "a.zip", policy=allowed, what="input.x", max_bytes=100).read_bytes() == b"PK\x03\x04z"
    port = files.rsplit(":", 1)[1]
    for target in (f"http://localhost:{port}/photos.zip", f"http://[::1]:{port}/photos.zip", "http://169.254.169.254/latest"):
        with pytest.raises(EgressRefused, match="input.x"):
            fetch(f"{files}/to?{target}", tmp_path / "b.zip", policy=allowed, what="input.x", max_bytes=100)
    with pytest.raises(InputError, match="larger than the limit of 3145728 bytes"):
        fetch(f"{files}/big", tmp_path / "c.zip", policy=allowed, what="input.x", max_bytes=3 * 2**20)
    with pytest.raises(InputError, match=r"larger than the limit of 4 bytes \(5 bytes\)"):
        fetch(f"{files}/photos.zip", tmp_path / "d.zip", policy=allowed, what="input.x", max_bytes=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]  # nothing half-written is left
    with pytest.raises(EgressRefused):
        fetch(f"{files}/photos.zip", tmp_path / "e.zip", policy=EgressPolicy(), what="input.x", max_bytes=100)


def test_the_connection_goes_to_the_address_that_was_checked(tmp_path, files, monkeypatch):
    """DNS rebinding: the name answers an allowed address for the check and another one after;
    the download still goes to the checked one (its second lookup would lead nowhere)."""
    import socket

    real, lookups = socket.getaddrinfo, []

    def rebinding(host, *args, **kwargs):
        if host == "files.example":
            lookups.append(host)
            return real("127.0.0.1" if len(lookups) == 1 else "127.0.0.2", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = files.rsplit(":", 1)[1]
    policy = EgressPolicy(("127.0.0.0/8",))
    got = fetch(f"http://files.example:{port}/photos.zip", tmp_path / "a.zip", policy=policy, what="input.x", max_bytes=100)
    assert got.read_bytes() == b"PK\x03\x04z" and lookups == ["files.example"]


def _tls_files(tmp_path):
    """An HTTPS file server on 127.0.0.1 whose certificate names only ``files.example``, and the
    CA that signed it."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(text):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test ca"))
        .issuer_name(name("test ca"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("files.example"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("files.example")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "leaf.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Photos)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, tmp_path / "ca.pem"


def test_a_pinned_https_connection_still_verifies_the_certificate_for_the_name(tmp_path, monkeypatch):
    import socket

    server, ca = _tls_files(tmp_path)
    real = socket.getaddrinfo
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: real("127.0.0.1" if host == "files.example" else host, *a, **k))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    policy = EgressPolicy(("127.0.0.1",))
    try:
        url = f"https://files.example:{server.server_port}/photos.zip"
        assert fetch(url, tmp_path / "a.zip", policy=policy, what="input.x", max_bytes=100).read_bytes() == b"PK\x03\x04z"
        # The certificate is checked for the name, not for the address connected to.
        wrong_name = f"https://127.0.0.1:{server.server_port}/photos.zip"
        with pytest.raises(InputError, match="cannot download"):
            fetch(wrong_name, tmp_path / "b.zip", policy=policy, what="input.x", max_bytes=100)
    finally:
        server.shutdown()
