"""The wire format: encode/decode round trips and every way a frame can be bad (pure)."""

from __future__ import annotations

import json

import pytest

from martinet.errors import ProtocolError
from martinet.protocol import PREFIX, SIGNATURE, VERSION, Cmd, decode, describe, encode

HEADER = {
    "rid": "abc123",
    "op": "execute",
    "args": {"x": [1, 2.5, None, True], "text": "héllo ✓ 😀"},
    "n": 0,
    "nested": {"deep": {"deeper": []}},
}


@pytest.mark.parametrize("cmd", list(Cmd), ids=lambda c: c.name)
def test_every_command_round_trips(cmd):
    frames = encode(cmd, HEADER)
    assert len(frames) == 1 and isinstance(frames[0], bytes)  # one frame: one send
    assert frames[0][:6] == SIGNATURE + bytes([VERSION, cmd.value])
    decoded_cmd, header = decode(frames)
    assert decoded_cmd is cmd
    assert header == HEADER


def test_command_bytes_are_distinct():
    assert len({c.value for c in Cmd}) == len(Cmd)
    assert all(0 <= c.value <= 255 for c in Cmd)


def test_encode_without_header_sends_an_empty_object():
    assert decode(encode(Cmd.HEARTBEAT)) == (Cmd.HEARTBEAT, {})
    assert decode(encode(Cmd.ACK, None)) == (Cmd.ACK, {})


def test_encode_writes_values_json_does_not_know_as_text():
    class Thing:
        def __str__(self) -> str:
            return "thing!"

    _, header = decode(encode(Cmd.EVENT, {"what": Thing()}))
    assert header == {"what": "thing!"}


def test_unknown_header_keys_survive():
    frames = [PREFIX + bytes([Cmd.HELLO]) + b'{"worker_id":"w1","from_the_future":{"a":1},"x-extra":[1]}']
    cmd, header = decode(frames)
    assert cmd is Cmd.HELLO
    assert header == {"worker_id": "w1", "from_the_future": {"a": 1}, "x-extra": [1]}


def test_extra_frames_after_the_header_are_ignored():
    assert decode([*encode(Cmd.TASK, {"id": 1}), b"trailing"]) == (Cmd.TASK, {"id": 1})


def bad(frames: list[bytes]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    assert info.value.raw == frames  # kept for the log line
    return info.value


def test_no_frame_at_all():
    assert "empty" in str(bad([]))


def test_the_version_1_layout_of_three_frames_is_refused_by_its_version():
    err = bad([b"MRTN\x01", bytes([Cmd.HELLO]), b"{}"])
    assert "version 1 is not supported" in str(err)


@pytest.mark.parametrize("cut", [0, 3, 4, 5])
def test_a_message_cut_short(cut):
    err = bad([encode(Cmd.HELLO, {"a": 1})[0][:cut]])
    assert "signature" in str(err) or "unknown command" in str(err)


@pytest.mark.parametrize(
    "prefix",
    [b"", b"MRTN", b"XXXX\x02", b"mrtn\x02", b"MRT\x02", b"\x00" * 5],
    ids=["empty", "no-version", "other", "lowercase", "short", "zeros"],
)
def test_bad_signature(prefix):
    err = bad([prefix if len(prefix) < 5 else prefix + bytes([Cmd.HELLO]) + b"{}"])
    assert "signature" in str(err)


@pytest.mark.parametrize("version", [0, VERSION + 1, 255])
def test_wrong_version_names_both_versions(version):
    err = bad([SIGNATURE + bytes([version, Cmd.HELLO]) + b"{}"])
    message = str(err)
    assert f"version {version}" in message
    assert f"speaks {VERSION}" in message


@pytest.mark.parametrize(
    "cmd_frame",
    [b"\x00", b"\xff", b"\x04", b"", b"HELLO"],
    ids=["zero", "ff", "gap", "empty", "word"],
)
def test_unknown_command(cmd_frame):
    err = bad([PREFIX + cmd_frame + (b"{}" if cmd_frame else b"")])
    assert "unknown command" in str(err)


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"{'single': 1}", b"{}}"])
def test_header_that_is_not_json(body):
    err = bad([PREFIX + bytes([Cmd.REQUEST]) + body])
    assert "not JSON" in str(err)


@pytest.mark.parametrize("body", [b"[]", b"[1, 2]", b"null", b"1", b'"text"', b"true"])
def test_header_that_is_json_but_not_an_object(body):
    err = bad([PREFIX + bytes([Cmd.REQUEST]) + body])
    assert "not a JSON object" in str(err)


@pytest.mark.parametrize("body", [b'{"a": "\xff"}', b'{"a": "\xc3\x28"}', b"\xfe\xfe\xfe\xfe"])
def test_header_that_is_not_utf8(body):
    err = bad([PREFIX + bytes([Cmd.REQUEST]) + body])
    assert "not JSON" in str(err)


def test_protocol_error_without_raw_has_an_empty_list():
    assert ProtocolError("x").raw == []


def test_describe_is_short_and_safe():
    huge = [PREFIX + bytes([Cmd.TASK]) + b"\xff\x00\n" * 1_000_000, b"x" * 10_000, b"y", b"z"]
    text = describe(huge)
    assert isinstance(text, str)
    assert len(text) < 1000
    assert "\n" not in text and "\x00" not in text  # one log line, no control bytes
    assert "MRTN" in text
    assert describe([]) == "b''"
    assert describe([b"\xc3\x28", b"\x80"]) == repr(b"\xc3\x28|\x80")


def test_describe_shows_at_most_four_frames_and_a_bounded_prefix_of_each():
    frames = [b"a" * 100, b"b" * 100, b"c", b"d", b"e-is-dropped"]
    text = describe(frames, limit=10)
    assert "e-is-dropped" not in text
    assert "a" * 10 in text and "a" * 11 not in text
    assert len(text) <= 2 * 10 + 3  # bytes repr adds b'' around at most limit * 2 bytes


def test_header_json_is_compact():
    body = encode(Cmd.REPLY, {"a": 1, "b": [1, 2]})[0][6:]
    assert body == b'{"a":1,"b":[1,2]}'
    assert json.loads(body) == {"a": 1, "b": [1, 2]}
