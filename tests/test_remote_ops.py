"""The operation table is the one list of what crosses the wire, and both ends obey it."""

from __future__ import annotations

import pytest

from brama_actors._remote import _service
from brama_actors._remote._frames import Request, decode_request, to_wire
from brama_actors._remote._service import NodeService
from brama_actors._remote._wire import encode


def test_the_service_check_refuses_a_method_that_drifted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The load-time check catches a method taking an argument the table does not list."""
    def status(self: NodeService, identifier: str, scope: str | None,
               verbose: bool = False) -> None:
        raise AssertionError("not called")

    monkeypatch.setattr(NodeService, "status", status)
    with pytest.raises(TypeError, match="verbose"):
        _service._check_table()
    monkeypatch.delattr(NodeService, "status")
    with pytest.raises(TypeError, match="no method for operation 'status'"):
        _service._check_table()


def test_a_request_outside_the_table_is_refused_by_the_node() -> None:
    """Unknown operations and unknown arguments are malformed requests."""
    ok = decode_request(encode(to_wire(Request(1, "status", {"identifier": "db"}))))
    assert ok.op == "status"
    with pytest.raises(ValueError, match="malformed"):
        decode_request(encode(to_wire(Request(2, "shutdown", {}))))
    with pytest.raises(ValueError, match="takes no argument"):
        decode_request(encode(to_wire(Request(3, "status", {"identifier": "db",
                                                            "path": "/etc"}))))
