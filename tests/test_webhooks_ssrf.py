"""The SSRF guard: URL forms that must be refused, allow-listing, address pinning, TLS/SNI."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from service.core.settings import Settings
from service.core.storage import LocalStorage
from service.webhooks import ssrf
from service.webhooks.addresses import inet_aton
from service.webhooks.delivery import Claimed, attempt
from service.webhooks.transport import MAX_RESPONSE_BYTES, TransportError, post
from tests.helpers import IDLE, make_key

DEFAULT = Settings()

REFUSED = [
    # loopback, however it is spelled
    "http://127.0.0.1/hook",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://017700000001/",
    "http://0177.0.0.1/",
    "http://127.000.000.001/",
    "http://１２７.０.０.１/",  # fullwidth digits: IDNA folds them to 127.0.0.1
    "http://127.0.0.1./",
    "http://localhost:8080/",
    "http://LOCALHOST/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:7f00:1]/",
    "http://[::127.0.0.1]/",  # IPv4-compatible
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    # unspecified
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    # private, CGNAT, and their IPv6 embeddings
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://[2002:c0a8:101::1]/",  # 6to4 of 192.168.1.1
    "http://[64:ff9b::10.0.0.1]/",  # NAT64 of 10.0.0.1
    "http://[::ffff:10.0.0.1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    # link-local and cloud metadata
    "http://169.254.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://[fd00:ec2::254]/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata.google.internal./",
    "http://100.100.100.200/",
    "http://192.0.0.192/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    # multicast, reserved, broadcast, documentation, Teredo
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://240.0.0.1/",
    "http://255.255.255.255/",
    "http://192.0.2.10/",
    "http://[2001:db8::1]/",
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
    # does not resolve
    "http://does-not-exist.invalid/",
    # static checks
    "ftp://example.com/",
    "file:///etc/passwd",
    "javascript:alert(1)",
    "http:///nohost",
    "http://user:pass@93.184.216.34/",
    "http://93.184.216.34@127.0.0.1/",
    "http://93.184.216.34:0/",
    "http://93.184.216.34:99999/",
    "http://93.184.216.34:http/",
    "http://exa mple.com/",
    "http://127.0.0.1\t/",
    "http://93.184.216.34\\@127.0.0.1/",
    "http://" + "a" * 2100 + ".com/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused(url: str) -> None:
    with pytest.raises(ssrf.UnsafeWebhookURL):
        ssrf.check_webhook_url(url, DEFAULT)


@pytest.mark.parametrize(
    "url,ip",
    [
        ("http://93.184.216.34/hook?x=1", "93.184.216.34"),
        ("https://[2606:2800:220:1::]:8443/x", "2606:2800:220:1::"),
        ("http://1572395042/", "93.184.216.34"),  # decimal form of a public address
        ("http://[::ffff:93.184.216.34]/", "::ffff:5db8:d822"),
        ("http://[2002:5db8:d822::1]/", "2002:5db8:d822::1"),  # 6to4 of a public address
    ],
)
def test_public_literals_pass(url: str, ip: str) -> None:
    target = ssrf.check_webhook_url(url, DEFAULT)
    assert ssrf.resolve_target(target, DEFAULT) == [ipaddress.ip_address(ip)]


def test_inet_aton_matches_libc() -> None:
    for text in ["127.1", "0x7f.1", "017700000001", "2130706433", "10.0x10.1", "1.2.3.4"]:
        assert str(inet_aton(text)) == socket.inet_ntoa(socket.inet_aton(text))
    for text in ["1.2.3.256", "08.1.1.1", "1..2", "example.com", "0x1g", "4294967296"]:
        assert inet_aton(text) is None


def fake_resolver(table: dict[str, list[str]], calls: list[str] | None = None):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        if calls is not None:
            calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in table[host]
        ]

    return resolve


def test_host_names_are_judged_by_what_they_resolve_to() -> None:
    dns = fake_resolver(
        {
            "public.test": ["93.184.216.34"],
            "private.test": ["10.1.2.3", "fd00::5"],
            "mixed.test": ["10.1.2.3", "93.184.216.34"],
            "mapped.test": ["::ffff:127.0.0.1"],
        }
    )
    assert ssrf.check_webhook_url("https://public.test/h", DEFAULT, dns).host == "public.test"
    with pytest.raises(ssrf.UnsafeWebhookURL, match="only to refused"):
        ssrf.check_webhook_url("https://private.test/h", DEFAULT, dns)
    with pytest.raises(ssrf.UnsafeWebhookURL, match="IPv6 form of a loopback"):
        ssrf.check_webhook_url("https://mapped.test/h", DEFAULT, dns)
    # Mixed answers pass, but delivery may only ever connect to the public one.
    target = ssrf.check_webhook_url("https://mixed.test/h", DEFAULT, dns)
    assert ssrf.resolve_target(target, DEFAULT, dns) == [ipaddress.ip_address("93.184.216.34")]


def test_allowlist_and_allow_private() -> None:
    dns = fake_resolver({"hook.internal": ["10.0.0.5"], "other.internal": ["10.0.0.5"]})
    by_name = Settings(webhook_allowlist="hook.internal")
    assert ssrf.check_webhook_url("http://hook.internal:8080/", by_name, dns)
    with pytest.raises(ssrf.UnsafeWebhookURL):
        ssrf.check_webhook_url("http://other.internal/", by_name, dns)
    by_net = Settings(webhook_allowlist="10.0.0.0/8, 127.0.0.1")
    assert ssrf.check_webhook_url("http://other.internal/", by_net, dns)
    assert ssrf.check_webhook_url("http://127.0.0.1:9/", by_net)
    assert ssrf.check_webhook_url("http://[::ffff:127.0.0.1]:9/", by_net)
    with pytest.raises(ssrf.UnsafeWebhookURL):
        ssrf.check_webhook_url("http://127.0.0.2/", by_net)

    private = Settings(webhook_allow_private=True)
    for url in ("http://10.0.0.1/", "http://[::1]/", "http://192.168.0.1/"):
        assert ssrf.check_webhook_url(url, private)
    # Metadata stays shut unless named explicitly.
    for url in ("http://169.254.169.254/", "http://metadata.google.internal/",
                "http://[fd00:ec2::254]/"):
        with pytest.raises(ssrf.UnsafeWebhookURL, match="metadata"):
            ssrf.check_webhook_url(url, private)
    assert ssrf.check_webhook_url("http://169.254.169.254/", Settings(
        webhook_allowlist="169.254.169.254"))


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Recorder.seen.append(dict(self.headers))
        if self.path == "/big":  # a flood the dispatcher must not swallow
            self.send_response(500)
            self.send_header("Content-Length", str(1 << 20))
            self.end_headers()
            try:
                self.wfile.write(b"x" * (1 << 20))
            except OSError:
                pass
            return
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def local_server():  # type: ignore[no-untyped-def]
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_delivery_resolves_once_and_connects_to_the_checked_address(
    local_server, tmp_path: Path
) -> None:
    port = local_server.server_address[1]
    storage = LocalStorage(tmp_path, "http://files", b"k")
    settings = Settings(webhook_allowlist="hook.test", webhook_timeout_seconds=2)
    claimed = Claimed("msg_1", "job.succeeded", f"http://hook.test:{port}/in", {"data": {}},
                      1, dt.datetime.now(dt.UTC), ["whsec_" + "A" * 44])
    calls: list[str] = []
    outcome = attempt(claimed, settings=settings, storage=storage,
                      resolver=fake_resolver({"hook.test": ["127.0.0.1"]}, calls))
    assert outcome.status == "succeeded" and outcome.status_code == 204, outcome
    assert calls == ["hook.test"]  # one lookup: nothing can rebind between check and connect
    assert local_server.RequestHandlerClass.seen[-1]["Host"] == f"hook.test:{port}"

    # Rebinding: the name passed at submit, now it points inside. Nothing is sent.
    before = len(_Recorder.seen)
    rebinding = Claimed("msg_2", "job.succeeded", f"http://rebind.test:{port}/in",
                        {"data": {}}, 1, dt.datetime.now(dt.UTC), ["whsec_" + "A" * 44])
    outcome = attempt(rebinding, settings=Settings(webhook_retry_schedule="0,1"),
                      storage=storage, resolver=fake_resolver({"rebind.test": ["127.0.0.1"]}))
    assert outcome.status == "pending" and "refused" in (outcome.error or "")
    assert outcome.next_attempt_at is not None and len(_Recorder.seen) == before


def test_response_bodies_are_read_only_up_to_the_cap(local_server) -> None:
    port = local_server.server_address[1]
    target = ssrf.parse_url(f"http://127.0.0.1:{port}/big")
    answer = post(target, [ipaddress.ip_address("127.0.0.1")], b"{}", {},
                  connect_timeout=2, total_timeout=5)
    assert answer.status == 500 and len(answer.body) == MAX_RESPONSE_BYTES


def _self_signed(tmp_path: Path, name: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def test_https_pins_the_ip_but_verifies_the_name(local_server, tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "hook.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    sni: list[str | None] = []
    context.sni_callback = lambda sock, name, ctx: sni.append(name)  # type: ignore[assignment,misc,return-value]
    local_server.socket = context.wrap_socket(local_server.socket, server_side=True)
    port = local_server.server_address[1]
    pinned = [ipaddress.ip_address("127.0.0.1")]

    target = ssrf.parse_url(f"https://hook.test:{port}/tls")
    answer = post(target, pinned, b"{}", {}, connect_timeout=2, total_timeout=5, ca_certs=cert)
    assert answer.status == 204 and answer.address == "127.0.0.1"
    assert sni == ["hook.test"]  # SNI carries the name even though we dialled the IP

    wrong = ssrf.parse_url(f"https://other.test:{port}/tls")
    with pytest.raises(TransportError, match="tls"):
        post(wrong, pinned, b"{}", {}, connect_timeout=2, total_timeout=5, ca_certs=cert)


def gen_with_webhook(url: str) -> dict:
    return {"model": IDLE, "task": "generate", "input": {"prompt": "x"}, "webhook": url}


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://[::1]/",
        "http://0x7f.1/",
        "http://2130706433/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/",
        "http://metadata.google.internal/",
        "http://does-not-exist.invalid/",
    ],
)
def test_submit_refuses_unsafe_webhooks(client, auth, url: str) -> None:
    r = client.post("/v1/jobs", json=gen_with_webhook(url), headers=auth)
    assert r.status_code == 422, r.json
    assert r.json["error"]["code"] == "validation_error"
    assert r.json["error"]["details"][0]["field"] == "webhook"


def test_submit_accepts_allowlisted_and_public(settings, client, auth) -> None:
    from service.api import create_app

    assert client.post("/v1/jobs", json=gen_with_webhook("http://93.184.216.34/h"),
                       headers=auth).status_code == 202
    app = create_app(settings.model_copy(update={"webhook_allowlist": ["127.0.0.1"]}))
    other = {"Authorization": f"Bearer {make_key(settings, 'ssrf')}"}
    r = app.test_client().post("/v1/jobs", json=gen_with_webhook("http://127.0.0.1:9/h"),
                               headers=other)
    assert r.status_code == 202, r.json
