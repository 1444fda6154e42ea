"""ance.wire.transport: the broker's ROUTER and the roles' DEALERs, one socket policy (real sockets)."""

from __future__ import annotations

import pytest
import zmq

from ance.run.config import BrokerConfig
from ance.run.errors import AnceError
from ance.wire.transport import dealer_socket, router_socket


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.term()


def test_router_and_dealer_talk_and_share_the_frame_cap(ctx):
    router, endpoint = router_socket(ctx, BrokerConfig(address="tcp://127.0.0.1:*", max_frame_bytes=1000))
    dealer = dealer_socket(ctx, BrokerConfig(address=endpoint, max_frame_bytes=1000), b"w-1", immediate=True)
    try:
        assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith("*")
        for sock in (router, dealer):
            assert sock.getsockopt(zmq.MAXMSGSIZE) == 2000 and sock.getsockopt(zmq.LINGER) == 0
        assert dealer.getsockopt(zmq.IMMEDIATE) == 1 and dealer.getsockopt(zmq.RECONNECT_IVL_MAX) == 2000
        dealer.send(b"hello")
        assert router.poll(5000)
        peer, frame = router.recv_multipart()
        assert (peer, frame) == (b"w-1", b"hello")
        router.send_multipart([peer, b"welcome"])
        assert dealer.poll(5000) and dealer.recv() == b"welcome"
    finally:
        router.close(0)
        dealer.close(0)


def test_a_taken_address_is_a_clear_error(ctx):
    router, endpoint = router_socket(ctx, BrokerConfig(address="tcp://127.0.0.1:*"))
    try:
        with pytest.raises(AnceError, match="cannot bind .*another broker running"):
            router_socket(ctx, BrokerConfig(address=endpoint))
    finally:
        router.close(0)


def test_binding_off_loopback_without_keys_is_refused(ctx):
    with pytest.raises(Exception, match="curve_keys|CURVE|loopback"):
        router_socket(ctx, BrokerConfig(address="tcp://0.0.0.0:*"))
