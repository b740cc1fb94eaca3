"""The frame codec: 1-byte type, 3-byte big-endian length, payload (docs/protocol.md §1).

Byte-level vectors are fed whole, one byte at a time, split at every offset and
several to a chunk (h11/wsproto style).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vectors import VECTORS

from runner import frame
from runner.errors import ErrCode, ReplyTooLarge
from runner.frame import HEADER_LEN, MAX_PAYLOAD, Frame, FrameDecoder
from runner.protocol import MessageType

SMALL = list(VECTORS.items())


def _expected(raw: bytes) -> Frame:
    """The frame a vector holds, read straight from its header."""
    size = int.from_bytes(raw[1:4], "big")
    assert len(raw) == HEADER_LEN + size, "vector transcription error"
    return Frame(raw[0], raw[HEADER_LEN:])


def _drain(decoder: FrameDecoder) -> list[Frame]:
    frames = []
    while (f := decoder.next_frame()) is not None:
        frames.append(f)
    return frames


def _feed_chunks(chunks: list[bytes]) -> tuple[list[Frame], FrameDecoder]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for chunk in chunks:
        decoder.feed(chunk)
        frames.extend(_drain(decoder))
    return frames, decoder


def _reencode(f: Frame) -> bytes:
    # frame.encode refuses an empty payload (APISIX would answer 500), but a
    # peer can still announce one, so the inverse of the decoder is written out.
    if f.payload:
        return frame.encode(f.type, f.payload)
    return struct.pack(">I", f.type << 24)


# --- encode ------------------------------------------------------------------


@pytest.mark.parametrize(("name", "raw"), SMALL, ids=[n for n, _ in SMALL])
def test_encode_reproduces_the_protocol_examples(name: str, raw: bytes) -> None:
    expected = _expected(raw)
    assert frame.encode(expected.type, expected.payload) == raw


def test_encode_writes_the_length_big_endian_after_the_type_byte() -> None:
    payload = b"x" * 0x010203
    encoded = frame.encode(MessageType.HTTP_REQ_CALL, payload)
    assert encoded[:4] == b"\x02\x01\x02\x03"
    assert encoded[4:] == payload


def test_encode_accepts_the_largest_payload_a_frame_can_carry() -> None:
    encoded = frame.encode(MessageType.EXTRA_INFO, bytes(MAX_PAYLOAD))
    assert encoded[:4] == b"\x03\xff\xff\xff"
    assert len(encoded) == HEADER_LEN + 16_777_215


def test_encode_refuses_a_payload_over_16_777_215_bytes_as_service_unavailable() -> None:
    with pytest.raises(ReplyTooLarge) as info:
        frame.encode(MessageType.HTTP_REQ_CALL, bytes(MAX_PAYLOAD + 1))
    assert info.value.code == ErrCode.SERVICE_UNAVAILABLE


@pytest.mark.parametrize("type_", list(MessageType))
def test_encode_refuses_a_zero_length_payload(type_: MessageType) -> None:
    with pytest.raises(ValueError):
        frame.encode(type_, b"")


# --- decode_header -------------------------------------------------------------


def test_decode_header_reads_type_and_big_endian_length() -> None:
    assert frame.decode_header(b"\x02\x01\x00\x00") == (2, 65536)
    assert frame.decode_header(b"\x01\x00\x00\x6c") == (MessageType.PREPARE_CONF, 108)
    assert frame.decode_header(b"\x04\xff\xff\xff") == (4, MAX_PAYLOAD)


@pytest.mark.parametrize(("name", "raw"), SMALL, ids=[n for n, _ in SMALL])
def test_decode_header_matches_each_example(name: str, raw: bytes) -> None:
    expected = _expected(raw)
    assert frame.decode_header(raw[:HEADER_LEN]) == (expected.type, len(expected.payload))


# --- FrameDecoder: the small vectors ---------------------------------------------


@pytest.mark.parametrize(("name", "raw"), SMALL, ids=[n for n, _ in SMALL])
def test_vector_fed_whole_yields_one_frame(name: str, raw: bytes) -> None:
    frames, decoder = _feed_chunks([raw])
    assert frames == [_expected(raw)]
    assert decoder.pending == 0


@pytest.mark.parametrize(("name", "raw"), SMALL, ids=[n for n, _ in SMALL])
def test_vector_fed_one_byte_at_a_time_yields_one_frame_only_at_the_last_byte(name: str, raw: bytes) -> None:
    decoder = FrameDecoder()
    for i in range(len(raw) - 1):
        decoder.feed(raw[i : i + 1])
        assert decoder.next_frame() is None
        assert decoder.pending == i + 1
    decoder.feed(raw[-1:])
    assert _drain(decoder) == [_expected(raw)]
    assert decoder.pending == 0


@pytest.mark.parametrize(("name", "raw"), SMALL, ids=[n for n, _ in SMALL])
def test_vector_split_at_every_offset_yields_the_same_frame(name: str, raw: bytes) -> None:
    expected = _expected(raw)
    for cut in range(len(raw) + 1):
        frames, decoder = _feed_chunks([raw[:cut], raw[cut:]])
        assert frames == [expected], f"split at {cut}"
        assert decoder.pending == 0


@pytest.mark.parametrize(("name", "raw"), SMALL, ids=[n for n, _ in SMALL])
def test_trailing_bytes_of_the_next_frame_stay_pending(name: str, raw: bytes) -> None:
    trailing = VECTORS["prepare_conf_resp"][:6]
    frames, decoder = _feed_chunks([raw + trailing])
    assert frames == [_expected(raw)]
    assert decoder.pending == len(trailing)
    decoder.feed(VECTORS["prepare_conf_resp"][6:])
    assert _drain(decoder) == [_expected(VECTORS["prepare_conf_resp"])]


def test_several_frames_in_one_chunk_come_out_in_order() -> None:
    stream = b"".join(raw for _, raw in SMALL)
    frames, decoder = _feed_chunks([stream])
    assert frames == [_expected(raw) for _, raw in SMALL]
    assert decoder.pending == 0


def test_several_frames_fed_one_byte_at_a_time_come_out_in_order() -> None:
    stream = b"".join(raw for _, raw in SMALL)
    frames, decoder = _feed_chunks([stream[i : i + 1] for i in range(len(stream))])
    assert frames == [_expected(raw) for _, raw in SMALL]
    assert decoder.pending == 0


def test_several_frames_split_at_every_offset_come_out_in_order() -> None:
    stream = b"".join(raw for _, raw in SMALL)
    expected = [_expected(raw) for _, raw in SMALL]
    for cut in range(len(stream) + 1):
        frames, decoder = _feed_chunks([stream[:cut], stream[cut:]])
        assert frames == expected, f"split at {cut}"
        assert decoder.pending == 0


@pytest.mark.parametrize(("name", "raw"), SMALL)
def test_whole_frame_takes_exactly_one_frame_as_it_is(name: str, raw: bytes) -> None:
    assert FrameDecoder().whole_frame(raw) == _expected(raw)


@pytest.mark.parametrize(("name", "raw"), SMALL)
def test_whole_frame_refuses_partial_or_extra_bytes_which_feed_then_decodes(name: str, raw: bytes) -> None:
    frame = _expected(raw)
    for cut in range(len(raw)):
        decoder = FrameDecoder()
        assert decoder.whole_frame(raw[:cut]) is None, f"{cut} bytes"
        decoder.feed(raw[:cut])
        assert _drain(decoder) == []
        decoder.feed(raw[cut:])
        assert _drain(decoder) == [frame], f"split at {cut}"
    for data, frames, left in [(raw + raw[:1], [frame], 1), (raw + raw, [frame, frame], 0)]:
        decoder = FrameDecoder()
        assert decoder.whole_frame(data) is None
        decoder.feed(data)
        assert _drain(decoder) == frames
        assert decoder.pending == left


def test_whole_frame_refuses_while_bytes_are_buffered() -> None:
    raw = VECTORS["req_call_req"]
    decoder = FrameDecoder()
    decoder.feed(raw[:3])
    assert decoder.whole_frame(raw) is None


def test_decoder_accepts_bytearray_and_memoryview_chunks() -> None:
    raw = VECTORS["req_call_req"]
    frames, _ = _feed_chunks([bytearray(raw[:10]), memoryview(raw)[10:]])  # type: ignore[list-item]
    assert frames == [_expected(raw)]


def test_decoder_returns_frame_payloads_as_immutable_bytes() -> None:
    frames, _ = _feed_chunks([bytearray(VECTORS["err_bad_request"])])  # type: ignore[list-item]
    assert type(frames[0].payload) is bytes


# --- pending / truncation ----------------------------------------------------------


@pytest.mark.parametrize(
    "held",
    [b"", b"\x02\x00", b"\x02\x01\x00\x00\x00"],
    ids=["nothing", "a-header-shorter-than-four-bytes", "a-header-announcing-more-than-follows"],
)
def test_bytes_short_of_a_frame_give_no_frame_and_count_as_pending(held: bytes) -> None:
    # 02 01 00 00 announces 65,536 bytes: the decoder waits for them instead of failing.
    decoder = FrameDecoder()
    decoder.feed(held)
    assert decoder.next_frame() is None
    assert decoder.pending == len(held)


def test_pending_counts_a_partial_frame_until_its_last_byte_arrives() -> None:
    raw = VECTORS["req_call_req"]
    decoder = FrameDecoder()
    decoder.feed(raw[:50])
    assert decoder.next_frame() is None
    assert decoder.pending == 50
    decoder.feed(raw[50:-1])
    assert decoder.next_frame() is None
    assert decoder.pending == len(raw) - 1
    decoder.feed(raw[-1:])
    assert decoder.next_frame() == _expected(raw)
    assert decoder.pending == 0


def test_zero_length_frame_is_decoded_as_an_empty_payload() -> None:
    # The message layer rejects it (Err BAD_REQUEST); the framing stays in sync.
    frames, decoder = _feed_chunks([b"\x02\x00\x00\x00" + VECTORS["err_bad_request"]])
    assert frames == [Frame(2, b""), _expected(VECTORS["err_bad_request"])]
    assert decoder.pending == 0


def test_unknown_type_byte_is_passed_through() -> None:
    frames, _ = _feed_chunks([b"\xff\x00\x00\x01z"])
    assert frames == [Frame(255, b"z")]


# --- the 16,777,215-byte payload --------------------------------------------------


@pytest.fixture(scope="module")
def huge() -> tuple[bytes, bytes]:
    payload = bytes(range(256)) * (MAX_PAYLOAD // 256) + bytes(range(MAX_PAYLOAD % 256))
    assert len(payload) == MAX_PAYLOAD
    return frame.encode(MessageType.EXTRA_INFO, payload), payload


def test_largest_frame_fed_whole_yields_its_payload(huge: tuple[bytes, bytes]) -> None:
    raw, payload = huge
    assert raw[:4] == b"\x03\xff\xff\xff"
    frames, decoder = _feed_chunks([raw])
    assert len(frames) == 1
    assert frames[0].type == MessageType.EXTRA_INFO
    assert frames[0].payload == payload
    assert decoder.pending == 0


@pytest.mark.parametrize("cut", [1, 3, 4, 5, MAX_PAYLOAD // 2, MAX_PAYLOAD + 3])
def test_largest_frame_split_once_yields_its_payload(huge: tuple[bytes, bytes], cut: int) -> None:
    raw, payload = huge
    decoder = FrameDecoder()
    decoder.feed(raw[:cut])
    assert decoder.next_frame() is None
    assert decoder.pending == cut
    decoder.feed(raw[cut:])
    assert _drain(decoder) == [Frame(MessageType.EXTRA_INFO, payload)]
    assert decoder.pending == 0


def test_largest_frame_in_64_kib_reads_between_two_small_frames(huge: tuple[bytes, bytes]) -> None:
    raw, payload = huge
    small = VECTORS["extra_info_resp_absent"]
    stream = small + raw + small
    step = 1 << 16
    frames, decoder = _feed_chunks([stream[i : i + step] for i in range(0, len(stream), step)])
    assert frames == [_expected(small), Frame(MessageType.EXTRA_INFO, payload), _expected(small)]
    assert decoder.pending == 0


# --- property: h11's invariant ------------------------------------------------------


def _framed(type_: int, payload: bytes) -> bytes:
    return struct.pack(">I", type_ << 24 | len(payload)) + payload


_pieces = st.one_of(
    st.builds(_framed, st.integers(0, 255), st.binary(max_size=64)),  # well-formed frames
    st.sampled_from([raw for _, raw in SMALL]),  # the protocol examples
    st.binary(max_size=16),  # garbage, usually a forged huge length
)


@st.composite
def _chunked_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = b"".join(draw(st.lists(_pieces, max_size=6)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=8)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_chunked_streams())
def test_any_bytes_in_any_chunking_yield_frames_or_wait_and_reencode_to_the_consumed_prefix(
    stream: tuple[bytes, list[bytes]],
) -> None:
    data, chunks = stream
    frames, decoder = _feed_chunks(chunks)  # must not raise anything

    consumed = b"".join(_reencode(f) for f in frames)
    assert data.startswith(consumed)
    rest = data[len(consumed) :]
    assert decoder.pending == len(rest)
    # What is left is genuinely incomplete: a short header or a short payload.
    if len(rest) >= HEADER_LEN:
        _, size = frame.decode_header(rest[:HEADER_LEN])
        assert len(rest) < HEADER_LEN + size

    # The same bytes in one chunk give the same frames.
    whole, whole_decoder = _feed_chunks([data])
    assert whole == frames
    assert whole_decoder.pending == decoder.pending
