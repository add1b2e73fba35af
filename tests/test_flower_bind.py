"""``fluxcelery flower`` binds loopback unless told otherwise, and refuses to serve the
Workflows pages open on another address without an auth option (or ``--insecure``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("flower")

from fluxcelery.contrib.flower import bind_address


def options(address: str = "", basic_auth: list[str] | None = None, auth: str = "") -> object:
    return SimpleNamespace(address=address, basic_auth=basic_auth or [], auth=auth)


def test_no_address_binds_loopback() -> None:
    opts = options()
    assert bind_address(opts, insecure=False) is None
    assert opts.address == "127.0.0.1"


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_a_loopback_address_needs_no_auth(address: str) -> None:
    assert bind_address(options(address), insecure=False) is None


def test_another_address_without_auth_is_refused() -> None:
    refusal = bind_address(options("0.0.0.0"), insecure=False)
    assert refusal is not None
    assert "0.0.0.0" in refusal and "--basic-auth" in refusal and "--insecure" in refusal


@pytest.mark.parametrize(
    ("opts", "insecure"),
    [
        (options("0.0.0.0", basic_auth=["admin:s3cret"]), False),
        (options("0.0.0.0", auth=".*@example.com"), False),
        (options("0.0.0.0"), True),
    ],
)
def test_another_address_with_auth_or_insecure_is_served(opts: object, insecure: bool) -> None:
    assert bind_address(opts, insecure=insecure) is None


def test_the_command_refuses_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    from fluxcelery.contrib import flower as flower_tab

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("served")

    monkeypatch.setattr(flower_tab, "build", never)
    assert flower_tab.main(["--address=0.0.0.0", "--port=1"]) == 2
