"""A deployment server waiting for its clients says how many more it waits for and who
they are: at once, then periodically, and each time a client joins (an operator who
started too few clients sees it in the log instead of a silent hang)."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
from test_hostile import stub_for
from test_hostile_mtls import serve

from fedloom.transport import fedloom_pb2 as pb


def test_the_server_says_whom_it_waits_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fedloom.server")
    server, certs, port, _thread = serve(
        tmp_path,
        ["partition.num_clients=3", "server.clients_per_round=3"],
        status_every_s=3600.0,  # only the first line and the join lines in this test
    )
    try:
        stub = stub_for(certs, "client-000001", port)
        stub.Join(pb.JoinRequest(num_examples=1), timeout=60)
        deadline = time.monotonic() + 30
        while "waiting for 2 more" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.stop()
    text = caplog.text
    assert re.search(r"round 1: waiting for 3 more clients \(0 of 3 online: none\)", text)
    assert re.search(
        r"round 1: waiting for 2 more clients \(1 of 3 online: client-000001\); "
        r"not online: client-000000, client-000002",
        text,
    )
