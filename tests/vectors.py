"""Byte-level examples of the protocol's messages, as whole frames (header included).

Built with the Python FlatBuffers builder; APISIX's Lua builder lays bytes out
differently, so tests compare decoded fields, never payload bytes, except
where a vector is the input.
"""

from __future__ import annotations


def _hex(text: str) -> bytes:
    return bytes.fromhex(text)


VECTORS: dict[str, bytes] = {
    "prepare_conf_req": _hex(
        """
        01 00 00 6c 04 00 00 00 c8 ff ff ff 08 00 00 00
        28 00 00 00 1d 00 00 00 72 6f 75 74 65 23 31 23
        65 78 74 2d 70 6c 75 67 69 6e 2d 70 72 65 2d 72
        65 71 23 34 32 00 00 00 01 00 00 00 0c 00 00 00
        08 00 0c 00 08 00 04 00 08 00 00 00 08 00 00 00
        18 00 00 00 0d 00 00 00 7b 22 62 6f 64 79 22 3a
        22 68 69 22 7d 00 00 00 03 00 00 00 73 61 79 00
        """
    ),
    "prepare_conf_resp": _hex("01 00 00 14 0c 00 00 00 00 00 06 00 08 00 04 00 06 00 00 00 01 00 00 00"),
    "err_conf_token_not_found": _hex("00 00 00 14 0c 00 00 00 00 00 06 00 08 00 07 00 06 00 00 00 00 00 00 02"),
    "err_bad_request": _hex("00 00 00 0c 08 00 00 00 04 00 04 00 04 00 00 00"),
    "req_call_resp_no_action": _hex("02 00 00 0c 08 00 00 00 04 00 04 00 04 00 00 00"),
    "req_call_req": _hex(
        """
        02 00 00 c0 18 00 00 00 00 00 12 00 18 00 00 00
        10 00 00 00 0c 00 08 00 04 00 14 00 12 00 00 00
        6c 00 00 00 24 00 00 00 14 00 00 00 08 00 00 00
        01 00 00 00 04 00 00 00 7f 00 00 01 06 00 00 00
        2f 68 65 6c 6c 6f 00 00 02 00 00 00 24 00 00 00
        0c 00 00 00 00 00 06 00 08 00 04 00 06 00 00 00
        04 00 00 00 04 00 00 00 66 6c 61 67 00 00 00 00
        dc ff ff ff 08 00 00 00 0c 00 00 00 01 00 00 00
        31 00 00 00 01 00 00 00 78 00 00 00 01 00 00 00
        0c 00 00 00 08 00 0c 00 08 00 04 00 08 00 00 00
        08 00 00 00 14 00 00 00 09 00 00 00 6c 6f 63 61
        6c 68 6f 73 74 00 00 00 04 00 00 00 68 6f 73 74
        00 00 00 00
        """
    ),
    "req_call_resp_stop": _hex(
        """
        02 00 00 70 10 00 00 00 00 00 0a 00 0a 00 00 00
        09 00 04 00 0a 00 00 00 10 00 00 00 00 01 0a 00
        10 00 0e 00 08 00 04 00 0a 00 00 00 3c 00 00 00
        08 00 00 00 00 00 93 01 01 00 00 00 0c 00 00 00
        08 00 0c 00 08 00 04 00 08 00 00 00 08 00 00 00
        0c 00 00 00 03 00 00 00 66 6f 6f 00 06 00 00 00
        58 2d 52 65 73 70 00 00 06 00 00 00 64 65 6e 69
        65 64 00 00
        """
    ),
    "extra_info_req_var": _hex(
        """
        03 00 00 34 0c 00 00 00 08 00 0a 00 09 00 04 00 08 00 00 00 0c 00 00 00 00 01 06 00
        08 00 04 00 06 00 00 00 04 00 00 00 0b 00 00 00 72 65 6d 6f 74 65 5f 61 64 64 72 00
        """
    ),
    "extra_info_resp_result": _hex(
        """
        03 00 00 24 0c 00 00 00 00 00 06 00 08 00 04 00 06 00 00 00 04 00 00 00 09 00 00 00
        31 32 37 2e 30 2e 30 2e 31 00 00 00
        """
    ),
    "extra_info_resp_absent": _hex("03 00 00 0c 08 00 00 00 04 00 04 00 04 00 00 00"),
    "extra_info_req_resp_body": _hex(
        "03 00 00 20 0c 00 00 00 08 00 0c 00 0b 00 04 00 08 00 00 00 0c 00 00 00 00 00 00 03 04 00 04 00 04 00 00 00"
    ),
    "resp_call_resp": _hex(
        """
        04 00 00 28 10 00 00 00 0c 00 10 00 04 00 0a 00 00 00 0c 00 0c 00 00 00
        07 00 00 00 00 00 c9 00 04 00 00 00 03 00 00 00 63 61 74 00
        """
    ),
}


def payload(name: str) -> bytes:
    """The vector's FlatBuffer, without its 4-byte frame header."""
    return VECTORS[name][4:]
