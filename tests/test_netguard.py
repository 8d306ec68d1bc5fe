"""Address policy, table-driven with the first and last address of each refused range."""

from __future__ import annotations

import pytest

from pipeline.netguard import AddressPolicy

REFUSED = [
    "127.0.0.1",
    "127.255.255.255",
    "0.0.0.0",
    "10.0.0.0",
    "10.255.255.255",
    "172.16.0.0",
    "172.31.255.255",
    "192.168.0.0",
    "192.168.255.255",
    "169.254.169.254",
    "100.64.0.0",
    "100.127.255.255",
    "224.0.0.1",
    "239.255.255.255",
    "240.0.0.1",
    "255.255.255.255",
    "::",
    "::1",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "ff02::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::127.0.0.1",
    "2002:7f00:0001::",
    "2002:a9fe:a9fe::1",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::a00:1",
    "2001:0:4136:e378:8000:63bf:80ff:fffe",
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "100.63.255.255",
    "100.128.0.0",
    "172.15.255.255",
    "172.32.0.0",
    "2606:4700::1111",
    "::ffff:8.8.8.8",
]


@pytest.mark.parametrize("address", REFUSED)
def test_refused_by_default(address):
    assert not AddressPolicy().permits(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_permitted(address):
    assert AddressPolicy().permits(address)


def test_opened_network_and_its_wrapped_forms():
    policy = AddressPolicy(["127.0.0.0/8"])
    assert policy.permits("127.0.0.1") and policy.permits("::ffff:127.0.0.1")
    assert not policy.permits("10.0.0.1") and not policy.permits("::1")
    assert AddressPolicy(["127.0.0.2/32"]).permits("127.0.0.2")
    assert not AddressPolicy(["127.0.0.2/32"]).permits("127.0.0.1")
