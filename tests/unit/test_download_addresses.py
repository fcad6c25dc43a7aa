"""Which addresses a download may reach, and what of a download URL may be shown."""

from __future__ import annotations

import ipaddress

import pytest

from alice.downloads.addresses import AddressPolicy, AddressRefused
from alice.downloads.fetch import redact_url, redact_urls

REFUSED = [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "192.168.1.20", "169.254.169.254", "0.0.0.0",
    "100.64.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255",
    "::1", "::", "fe80::1", "fc00::1", "fd12::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",  # IPv4-mapped
    "::127.0.0.1",  # IPv4-compatible
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused_by_default(address):
    assert not AddressPolicy().allows(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed(address):
    assert AddressPolicy().allows(ipaddress.ip_address(address))


def test_allowed_networks_open_only_themselves():
    policy = AddressPolicy([ipaddress.ip_network("192.168.1.0/24")])
    assert policy.allows(ipaddress.ip_address("192.168.1.20"))
    assert policy.allows(ipaddress.ip_address("::ffff:192.168.1.20"))
    assert not policy.allows(ipaddress.ip_address("192.168.2.20"))
    assert not policy.allows(ipaddress.ip_address("127.0.0.1"))


def test_a_name_is_judged_by_what_it_resolves_to():
    with pytest.raises(AddressRefused):
        AddressPolicy().addresses_for("localhost", 80)
    with pytest.raises(AddressRefused):
        AddressPolicy().addresses_for("2130706433", 80)  # 127.0.0.1 spelt as one number
    assert AddressPolicy([ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]).addresses_for(
        "localhost", 80)


def test_configured_sources_are_trusted_by_host_and_port():
    policy = AddressPolicy(trusted_urls=lambda: ["http://127.0.0.1:8080", "https://civitai.com"])
    assert policy.trusts("127.0.0.1", 8080) and policy.trusts("CivitAI.com", 443)
    assert not policy.trusts("127.0.0.1", 8081) and not policy.trusts("civitai.com", 80)


def test_urls_lose_their_credentials_when_shown():
    url = "https://alice:hunter2@example.com:8443/m/model.safetensors?token=abc&X-Amz-Signature=f00&bare#frag"
    shown = redact_url(url)
    assert shown == "https://example.com:8443/m/model.safetensors?token=REDACTED&X-Amz-Signature=REDACTED&REDACTED"
    text = redact_urls(f"HTTP 404 for {url}, then 'http://u:p@h/x?sig=s'")
    for secret in ("hunter2", "abc", "f00", "bare", "frag", "u:p", "sig=s"):
        assert secret not in text
