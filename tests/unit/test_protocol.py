"""The wire format: encode/decode round trips and every way a frame can be bad (pure)."""

from __future__ import annotations

import json
import random

import pytest

from martinet.errors import ProtocolError
from martinet.protocol import (
    MAX_DEPTH,
    MAX_VALUE_DEPTH,
    PREFIX,
    SIGNATURE,
    VERSION,
    Cmd,
    decode,
    deeper_than,
    describe,
    encode,
    recover_rid,
)

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


# ---- nesting depth ---------------------------------------------------------------------


def nested(depth: int, leaf: object = 0) -> object:
    """Lists and dicts alternating, `depth` levels deep."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def request(body: bytes) -> list[bytes]:
    return [PREFIX + bytes([Cmd.REQUEST]) + body]


def test_a_frame_a_thousand_levels_deep_is_a_protocol_error_not_a_recursion_error():
    frames = request(b'{"op":"get","rid":"x","a":' + b"[" * 1000 + b"]" * 1000 + b"}")
    assert len(frames[0]) < 2100  # the 2 KB frame that rolled back the daemon's turns
    err = bad(frames)
    assert f"more than {MAX_DEPTH} levels deep (the limit)" in str(err)
    unclosed = request(b'{"a":' + b"[" * 100_000)  # a parser would go in before it found the end
    assert "levels deep" in str(bad(unclosed))
    for body in (b"{" * 5000, b'{"a":' * 5000, b"[0," * 5000, b"[[]," * 5000, b"[" * 10**6):
        assert "levels deep" in str(bad(request(body)))


def test_the_depth_limit_is_exact():
    assert MAX_DEPTH >= MAX_VALUE_DEPTH + 4  # room for the messages that carry a value (see MAX_DEPTH)
    at_limit = {"a": nested(MAX_DEPTH - 1)}  # the header object is a level too
    assert decode(encode(Cmd.REQUEST, at_limit)) == (Cmd.REQUEST, at_limit)
    assert "levels deep" in str(bad(encode(Cmd.REQUEST, {"a": nested(MAX_DEPTH)})))


def test_brackets_in_strings_do_not_count():
    header = {"a": "[" * 1000, "b": "{" * 500 + "]" * 700, "c": ['"[', "\\", '\\"{{'], "d": nested(20)}
    assert decode(encode(Cmd.TASK, header)) == (Cmd.TASK, header)
    assert deeper_than(json.dumps(header).encode(), 21) is False
    assert deeper_than(json.dumps(header).encode(), 20) is True


def test_strings_cannot_hide_depth():
    # Closers inside strings, openers after them: a parser sees 1000 levels.
    body = b"".join(b'["]",' for _ in range(1000)) + b"0" + b"]" * 1000
    assert "levels deep" in str(bad(request(b'{"a":' + body + b"}")))
    escaped = b"".join(b'["\\"]\\\\",' for _ in range(1000)) + b"0" + b"]" * 1000  # "\"]\\"
    assert "levels deep" in str(bad(request(b'{"a":' + escaped + b"}")))


def depth_of(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    return 0


def random_value(rng: random.Random, depth: int) -> object:
    if depth == 0 or rng.random() < 0.2:
        return rng.choice([0, 1.5, None, True, "", "x", '"]', "[{", "\\", '\\"]', "é[", "}\\\\"])
    items = [random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.5:
        return items
    return {rng.choice(["k", '"]', "[", "\\"]) + str(i): item for i, item in enumerate(items)}


def test_deeper_than_agrees_with_the_depth_of_random_values():
    rng = random.Random(22)
    for _ in range(2000):
        value = random_value(rng, rng.randint(1, 14))
        depth = depth_of(value)
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        for limit in (0, 1, depth - 1, depth, depth + 1, 8, 9, 10):
            if limit >= 0:
                assert deeper_than(text, limit) is (depth > limit), (text, limit)


def test_recover_rid_finds_the_request_id_near_the_start():
    deep = b"[" * 1000 + b"]" * 1000
    assert recover_rid(request(b'{"op":"get","rid":"ab12","a":' + deep + b"}")) == "ab12"
    assert recover_rid(request(b'{"op":"get","a":' + deep + b',"rid":"late"}')) is None  # not searched
    assert recover_rid([PREFIX + bytes([Cmd.DONE]) + b'{"rid":"x","a":' + deep + b"}"]) is None
    assert recover_rid(request(b'{"rid":"' + b"x" * 500 + b'"')) is None
    assert recover_rid([]) is None and recover_rid([b"junk"]) is None
