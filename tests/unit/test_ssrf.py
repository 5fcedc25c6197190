"""core/ssrf.py: which callback addresses are refused, allow-lists, and the pinned connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import ip_address

import httpx
import pytest

from core import ssrf
from core.config import ConfigError, Settings


def resolver(*addresses: str):
    """A stand-in for socket.getaddrinfo that answers with these addresses."""
    def resolve(host, port, type=0):  # noqa: A002 - getaddrinfo's own keyword
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (a, port)) for a in addresses]
    return resolve


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.254", "private"),
    ("192.168.1.1", "private"), ("::ffff:10.0.0.1", "private"), ("fc00::1", "private"),
    ("fd12:3456::1", "private"), ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"), ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", ""), ("255.255.255.255", ""), ("192.0.2.1", ""), ("198.18.0.1", ""),
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"),
    ("::ffff:169.254.169.254", "metadata"), ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("::127.0.0.1", "loopback"),  # IPv4-compatible form
])
def test_non_public_addresses_are_refused(address, reason):
    why = ssrf.refusal(ip_address(address))
    assert why is not None and reason in why


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700::1111",
                                     "::ffff:93.184.216.34", "64:ff9b::5db8:d822"])
def test_public_addresses_pass(address):
    assert ssrf.refusal(ip_address(address)) is None


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://127.0.0.1:8000/", "https://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://0.0.0.0/", "http://10.1.2.3/", "http://172.16.0.1/", "http://192.168.1.1/",
    "http://100.64.0.1/", "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/",
    # Spellings of 127.0.0.1 the resolver understands (decimal, short, hex).
    "http://2130706433/", "http://127.1/", "http://0x7f.1/",
    "http://localhost/", "http://localhost:9/x",
])
def test_callback_urls_into_private_networks_are_refused(url):
    with pytest.raises(ValueError, match="callbacks go to public addresses only") as caught:
        ssrf.check_callback_url(url, allow_private=False)
    assert isinstance(caught.value, ssrf.RefusedURL)


def test_public_ip_literal_passes_without_dns():
    # getaddrinfo answers an IP literal itself, without asking DNS (there is none here).
    assert ssrf.vetted_addresses("https://93.184.216.34/hook", False) == ["93.184.216.34"]
    ssrf.check_callback_url("http://93.184.216.34:8080/hook", allow_private=False)
    ssrf.check_callback_url("https://[2606:4700::1111]/hook", allow_private=False)


def test_a_host_is_refused_if_any_of_its_addresses_is_private():
    with pytest.raises(ssrf.RefusedURL, match="resolves to 10.0.0.5"):
        ssrf.vetted_addresses("https://receiver.example/hook", False,
                              resolve=resolver("93.184.216.34", "10.0.0.5"))
    assert ssrf.vetted_addresses("https://receiver.example/hook", False,
                                 resolve=resolver("93.184.216.34", "2606:4700::1111")) == [
        "93.184.216.34", "2606:4700::1111"]


@pytest.mark.parametrize("url, message", [
    ("ftp://93.184.216.34/x", "http or https"), ("file:///etc/passwd", "http or https"),
    ("http:///x", "no host"), ("http://[::1/", "not a valid URL"),
    ("http://93.184.216.34:99999/", "not a valid URL"),
])
def test_malformed_urls_are_refused(url, message):
    with pytest.raises(ssrf.RefusedURL, match=message):
        ssrf.check_callback_url(url, allow_private=True)


def test_unresolvable_hosts_are_their_own_error():
    with pytest.raises(ssrf.UnresolvableHost, match="does not resolve"):
        ssrf.check_callback_url("http://no-such-host.invalid/hook", allow_private=True)
    with pytest.raises(ssrf.UnresolvableHost):
        ssrf.check_callback_url("http://" + "a" * 300 + ".example/", allow_private=True)


def test_allow_lists():
    loopback = ("127.0.0.0/8", "::1/128")
    for url in ("http://127.0.0.1:9/", "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://localhost/"):
        ssrf.check_callback_url(url, allow_private=loopback)
        ssrf.check_callback_url(url, allow_private=True)
    for url in ("http://10.0.0.1/", "http://192.168.1.1/", "http://169.254.169.254/"):
        with pytest.raises(ssrf.RefusedURL):
            ssrf.check_callback_url(url, allow_private=loopback)
    ssrf.check_callback_url("http://10.9.8.7/", allow_private=["10.0.0.0/8"])


def test_metadata_addresses_need_to_be_allowed_by_name():
    for allow in (True, ["169.254.0.0/16"], ["0.0.0.0/0", "::/0"], ["fd00::/8"]):
        for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/",
                    "http://[::ffff:169.254.169.254]/"):
            with pytest.raises(ssrf.RefusedURL, match="metadata"):
                ssrf.check_callback_url(url, allow_private=allow)
    ssrf.check_callback_url("http://169.254.169.254/", allow_private=["169.254.169.254/32"])
    ssrf.check_callback_url("http://[fd00:ec2::254]/", allow_private=["fd00:ec2::254"])


def test_setting_parses_networks_or_true_false():
    def parsed(raw):
        return Settings.from_env({"VIGIL_ALLOW_PRIVATE_CALLBACKS": raw}).allow_private_callbacks

    assert Settings.from_env({}).allow_private_callbacks == ()
    assert parsed("false") == () and parsed("none") == ()
    assert parsed("true") == ("0.0.0.0/0", "::/0")
    assert parsed(" 127.0.0.1 , ::1,10.0.0.0/8") == ("127.0.0.1/32", "::1/128", "10.0.0.0/8")
    with pytest.raises(ConfigError, match="VIGIL_ALLOW_PRIVATE_CALLBACKS"):
        parsed("localhost")
    with pytest.raises(ConfigError, match="VIGIL_ALLOW_PRIVATE_CALLBACKS"):
        Settings(allow_private_callbacks=("not-a-network",)).check()


def test_rate_limit_and_idempotency_settings():
    s = Settings.from_env({})
    assert (s.rate_limit, s.idempotency_ttl_s) == (1000, 86400)
    s = Settings.from_env({"VIGIL_RATE_LIMIT": "0", "VIGIL_IDEMPOTENCY_TTL": "60"})
    assert (s.rate_limit, s.idempotency_ttl_s) == (0, 60)
    for env in ({"VIGIL_RATE_LIMIT": "-1"}, {"VIGIL_IDEMPOTENCY_TTL": "0"},
                {"VIGIL_RATE_LIMIT": "fast"}):
        with pytest.raises(ConfigError):
            Settings.from_env(env)


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A loopback HTTP server answering each POST with the Host header it received."""
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            host = self.headers["Host"].encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(host)))
            self.end_headers()
            self.wfile.write(host)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()


def test_pinned_transport_connects_to_the_checked_address_and_keeps_the_host(echo_server):
    # The name does not resolve at all: only the pinned address can be what was reached.
    url = f"http://receiver.invalid:{echo_server}/hook"
    with httpx.Client(transport=ssrf.PinnedTransport(["127.0.0.1"]), timeout=5) as client:
        response = client.post(url, content=b"{}")
    assert response.status_code == 200 and response.text == f"receiver.invalid:{echo_server}"
    # Addresses are tried in order (the first one refuses connections here).
    with httpx.Client(transport=ssrf.PinnedTransport(["127.0.0.2", "127.0.0.1"]), timeout=5) as client:
        assert client.post(url, content=b"{}").status_code == 200


def test_webhook_sender_refuses_at_delivery_time(echo_server):
    from tasks.webhooks import DeliveryError, RefusedDelivery, send_webhook

    secret = "whsec_dGVzdC13ZWJob29rLXNlY3JldC1mb3ItdmlnaWw="
    url = f"http://127.0.0.1:{echo_server}/hook"
    with pytest.raises(RefusedDelivery, match="refused: .*loopback"):
        send_webhook(url, {"type": "job.completed"}, "msg_1", secret, 5)
    with pytest.raises(RefusedDelivery, match="metadata"):
        send_webhook("http://169.254.169.254/", {}, "msg_1", secret, 5, ("0.0.0.0/0",))
    assert send_webhook(url, {}, "msg_1", secret, 5, ("127.0.0.0/8",)).status_code == 200
    # A name that does not resolve may be a DNS hiccup: a retryable failure, not a refusal.
    with pytest.raises(DeliveryError) as caught:
        send_webhook("http://no-such-host.invalid/", {}, "msg_1", secret, 5)
    assert not isinstance(caught.value, RefusedDelivery)
