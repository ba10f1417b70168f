"""trionet's pytest plugin, exercised the way users meet it: through ``pytester``.

Each test writes a small test module, runs pytest on it (in-process), and
checks the outcome.  The plugin is loaded through its ``pytest11`` entry
point, as in a user's project; pytest-trio runs the async tests
(``trio_mode = true`` in the generated ini file).
"""

from __future__ import annotations

import textwrap

import pytest

TRIO_MODE_INI = "[pytest]\ntrio_mode = true\n"

PREAMBLE = textwrap.dedent(
    """
    import os
    import socket

    import pytest
    import trio

    import trionet


    async def echo(conn):
        async for chunk in conn:
            await conn.send_all(chunk)


    async def talk(address, message):
        if isinstance(address, trionet.UnixAddress):
            stream = await trio.open_unix_socket(address.path)
        else:
            stream = await trio.open_tcp_stream(address.host, address.port)
        async with stream:
            await stream.send_all(message)
            await stream.send_eof()
            data = b""
            while chunk := await stream.receive_some():
                data += chunk
            return data
    """
)


def make_tests(pytester: pytest.Pytester, body: str) -> None:
    pytester.makeini(TRIO_MODE_INI)
    pytester.makepyfile(test_generated=PREAMBLE + textwrap.dedent(body))


def test_fixtures_are_registered_by_the_entry_point(pytester: pytest.Pytester) -> None:
    pytester.makeini(TRIO_MODE_INI)
    result = pytester.runpytest("--fixtures")
    result.stdout.fnmatch_lines(["trionet_server*", "unused_unix_path*"])


def test_a_server_and_a_real_client_pass(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        async def test_echo(trionet_server):
            server = await trionet_server(echo)
            (address,) = server.addresses
            assert isinstance(address, trionet.TCPAddress)
            assert address.host == "127.0.0.1" and address.port != 0
            assert await talk(address, b"ping") == b"ping"
            assert server.stats.accepted == 1

        async def test_options_reach_the_server(trionet_server):
            server = await trionet_server(echo, "tcp://127.0.0.1:0", max_connections=3)
            assert server.config.max_connections == 3
            assert server.config.handler_errors == "raise"
        """,
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=2)


def test_a_failing_handler_fails_the_test_with_its_own_exception(
    pytester: pytest.Pytester,
) -> None:
    make_tests(
        pytester,
        """
        async def broken(conn):
            await conn.receive_some()
            raise ZeroDivisionError("the handler divided by zero on purpose")

        async def test_handler_error(trionet_server):
            server = await trionet_server(broken)
            await talk(server.addresses[0], b"boom")
            await trio.sleep_forever()  # the handler's error must end the test
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "*raise ZeroDivisionError*",
            "*ZeroDivisionError: the handler divided by zero on purpose*",
        ]
    )


def test_handler_errors_can_be_logged_instead(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        async def broken(conn):
            raise ZeroDivisionError("logged, not raised")

        async def test_logged(trionet_server, caplog):
            server = await trionet_server(broken, handler_errors="log")
            address = server.addresses[0]
            async with await trio.open_tcp_stream(address.host, address.port) as stream:
                # EOF: the server logged and counted the error, then closed.
                assert await stream.receive_some() == b""
            assert server.stats.handler_errors == 1
            assert "logged, not raised" in caplog.text
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)


def test_unused_unix_path_serves_a_unix_socket_and_is_cleaned_up(
    pytester: pytest.Pytester,
) -> None:
    make_tests(
        pytester,
        """
        seen = []

        async def test_unix(trionet_server, unused_unix_path):
            assert not os.path.exists(unused_unix_path)
            assert len(unused_unix_path.encode()) < 100  # fits in sun_path
            seen.append(unused_unix_path)
            server = await trionet_server(echo, f"unix:{unused_unix_path}")
            assert server.addresses == [trionet.UnixAddress(unused_unix_path)]
            assert await talk(server.addresses[0], b"over unix") == b"over unix"

        def test_fresh_path_each_time(unused_unix_path):
            assert unused_unix_path != seen[0]

        def test_cleaned_up_afterwards():
            assert not os.path.exists(os.path.dirname(seen[0]))
        """,
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=3)


def test_servers_still_running_are_drained_at_teardown(pytester: pytest.Pytester) -> None:
    make_tests(
        pytester,
        """
        events = []

        async def polite(conn):
            await conn.send_all(b"hello\\n")
            await conn.draining.wait()
            events.append("drained")
            await conn.send_all(b"goodbye\\n")

        async def test_leaves_a_connection_open(trionet_server):
            server = await trionet_server(polite)
            address = server.addresses[0]
            stream = await trio.open_tcp_stream(address.host, address.port)
            assert await stream.receive_some() == b"hello\\n"
            # Keep the socket open past the end of the test (and its Trio run).
            events.append(stream.socket.detach())

        def test_teardown_drained_it():
            assert events[1] == "drained"
            with socket.socket(fileno=events[0]) as sock:
                sock.settimeout(5)
                data = b""
                while chunk := sock.recv(1024):
                    data += chunk
            assert data == b"goodbye\\n"
        """,
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=2)


def test_virtual_network_fixture_marker_and_the_seed_in_a_failure_report(
    pytester: pytest.Pytester,
) -> None:
    make_tests(
        pytester,
        """
        from trionet.testing import VirtualNetwork

        @pytest.mark.virtual_network(seed=42)
        async def test_seeded(virtual_network):
            assert virtual_network.seed == 42
            assert type(trio.socket.socket()).__name__ == "VirtualSocket"

        @pytest.mark.virtual_network(seed=7)
        async def test_fails(virtual_network):
            assert False, "boom"
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*trionet virtual network*", "*seed=7*virtual_network(seed=7)*"])
    assert "seed=42" not in result.stdout.str()


def test_a_virtual_network_asked_for_too_late_fails_the_test_loudly(
    pytester: pytest.Pytester,
) -> None:
    make_tests(
        pytester,
        """
        from trionet.pytest_plugin import install_for_test
        from trionet.testing import VirtualNetwork

        async def test_late(request):
            request.getfixturevalue("virtual_network")  # the run has already begun

        @pytest.fixture
        def second(request):
            return install_for_test(request, VirtualNetwork(seed=9))

        async def test_two(virtual_network, second):
            pass
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=1, errors=1)
    result.stdout.fnmatch_lines(
        ["*asked for two virtual networks*", "*asked for a virtual network but ran without it*"]
    )
