"""Headers and Args: werkzeug's verbs, and the values they refuse on every way in."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from runner import Args, Headers

# =============================================================================
# Headers: the verbs
# =============================================================================


def test_headers_lookup_ignores_case() -> None:
    h = Headers([("Content-Type", "text/plain")])
    assert h["content-type"] == "text/plain"
    assert h.get("CONTENT-TYPE") == "text/plain"
    assert "content-TYPE" in h
    assert h.getlist("Content-type") == ["text/plain"]


def test_headers_keep_the_case_they_were_given() -> None:
    h = Headers([("Content-Type", "a"), ("x-lower", "b")])
    h.add("X-Added", "c")
    assert h.keys() == ["Content-Type", "x-lower", "X-Added"]
    assert h.items() == [("Content-Type", "a"), ("x-lower", "b"), ("X-Added", "c")]


def test_headers_iteration_yields_name_value_pairs_in_order() -> None:
    pairs = [("X-Req", "foo"), ("Host", "h"), ("x-req", "bar")]
    h = Headers(pairs)
    assert list(h) == pairs
    assert len(h) == 3


def test_headers_getlist_collects_values_of_differently_cased_names() -> None:
    h = Headers([("X-Req", "foo"), ("Host", "h"), ("x-req", "bar")])
    assert h.getlist("X-REQ") == ["foo", "bar"]
    assert h["x-req"] == "foo"  # the first value
    assert h.getlist("missing") == []


def test_headers_get_returns_default_and_indexing_raises_key_error_when_absent() -> None:
    h = Headers()
    assert h.get("x") is None
    assert h.get("x", "fallback") == "fallback"
    with pytest.raises(KeyError):
        h["x"]


def test_headers_add_appends_another_value() -> None:
    h = Headers([("Set-Cookie", "a=1")])
    h.add("set-cookie", "b=2")
    assert h.getlist("Set-Cookie") == ["a=1", "b=2"]


def test_headers_set_replaces_every_value_at_the_first_position() -> None:
    h = Headers([("A", "1"), ("X-Req", "foo"), ("B", "2"), ("x-req", "bar")])
    h.set("X-REQ", "new")
    assert h.items() == [("A", "1"), ("X-REQ", "new"), ("B", "2")]


def test_headers_setitem_is_set() -> None:
    h = Headers([("X-Req", "foo"), ("B", "2"), ("x-req", "bar")])
    h["x-req"] = "new"
    assert h.items() == [("x-req", "new"), ("B", "2")]


def test_headers_set_of_a_new_name_appends_it() -> None:
    h = Headers([("A", "1")])
    h["B"] = "2"
    assert h.items() == [("A", "1"), ("B", "2")]


def test_headers_setlist_puts_all_values_at_the_first_position() -> None:
    h = Headers([("A", "1"), ("Via", "x"), ("B", "2"), ("via", "y")])
    h.setlist("VIA", ["p", "q"])
    assert h.items() == [("A", "1"), ("VIA", "p"), ("VIA", "q"), ("B", "2")]


def test_headers_setlist_with_no_values_removes_the_name() -> None:
    h = Headers([("A", "1"), ("Via", "x")])
    h.setlist("via", [])
    assert h.items() == [("A", "1")]


def test_headers_remove_drops_every_value_and_ignores_absent_names() -> None:
    h = Headers([("X-Req", "foo"), ("B", "2"), ("x-req", "bar")])
    h.remove("X-REQ")
    assert h.items() == [("B", "2")]
    h.remove("never-there")
    assert h.items() == [("B", "2")]


def test_headers_del_drops_every_value() -> None:
    h = Headers([("X-Req", "foo"), ("B", "2"), ("x-req", "bar")])
    del h["x-REQ"]
    assert "X-Req" not in h
    assert h.items() == [("B", "2")]


def test_headers_pop_returns_the_first_value_and_removes_all() -> None:
    h = Headers([("X-Req", "foo"), ("x-req", "bar")])
    assert h.pop("X-REQ") == "foo"
    assert "x-req" not in h
    assert h.pop("x-req") is None
    assert h.pop("x-req", "default") == "default"


def test_headers_contains_is_false_for_non_strings() -> None:
    h = Headers([("1", "one")])
    assert 1 not in h
    assert None not in h


def test_headers_from_a_dict_keep_its_order() -> None:
    h = Headers({"B": "2", "A": "1"})
    assert h.items() == [("B", "2"), ("A", "1")]


def test_headers_copy_is_independent_and_equal() -> None:
    h = Headers([("A", "1")])
    c = h.copy()
    assert c == h
    c.add("B", "2")
    assert h.items() == [("A", "1")]
    assert c.items() == [("A", "1"), ("B", "2")]
    assert c != h


def test_empty_header_value_is_allowed() -> None:
    h = Headers()
    h["X-Empty"] = ""
    assert h.get("x-empty") == ""
    assert "X-Empty" in h


def test_tab_and_non_ascii_text_are_allowed_in_header_values() -> None:
    h = Headers()
    h["X-Tab"] = "a\tb"
    h["X-Text"] = "caf\u00e9 \u2014 \u00a0"
    assert h.items() == [("X-Tab", "a\tb"), ("X-Text", "caf\u00e9 \u2014 \u00a0")]


def test_surrogate_escaped_bytes_are_allowed_in_header_values() -> None:
    # How the runner decodes raw bytes from nginx: they must be settable back.
    raw = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")
    h = Headers()
    h["X-Raw"] = raw
    assert h["x-raw"].encode("utf-8", "surrogateescape") == b"caf\xe9 \xff"


# =============================================================================
# Args
# =============================================================================


def test_args_names_are_case_sensitive() -> None:
    a = Args([("a", "1"), ("A", "2")])
    assert a.get("a") == "1"
    assert a.getlist("A") == ["2"]
    assert "B" not in a
    a["a"] = "x"
    assert a.items() == [("a", "x"), ("A", "2")]
    del a["A"]
    assert a.items() == [("a", "x")]


def test_args_keep_repeated_values_in_order() -> None:
    a = Args([("xx", "y"), ("y", ""), ("xx", "z")])
    assert a.getlist("xx") == ["y", "z"]
    assert a["y"] == ""


def test_args_accept_any_decoded_text_since_nginx_escapes_them() -> None:
    a = Args()
    a["q"] = "a b&c=d\r\n\0\x1b#?"
    a.add("caf\u00e9", "\u2028")
    assert a.items() == [("q", "a b&c=d\r\n\0\x1b#?"), ("caf\u00e9", "\u2028")]


def test_args_and_headers_are_not_equal_even_with_the_same_pairs() -> None:
    assert Args([("a", "1")]) != Headers([("a", "1")])
    assert Args([("a", "1")]) == Args([("a", "1")])


def test_args_copied_into_headers_are_checked_as_headers() -> None:
    with pytest.raises(ValueError):
        Headers(Args([("x", "a\nb")]))


# =============================================================================
# Refused values, on every way into a mapping
# =============================================================================

# Every way a header name or value can get in.
HEADER_PATHS: dict[str, Callable[[object, object], object]] = {
    "constructor-pairs": lambda n, v: Headers([(n, v)]),
    "constructor-dict": lambda n, v: Headers({n: v}),
    "add": lambda n, v: Headers().add(n, v),
    "set": lambda n, v: Headers().set(n, v),
    "setitem": lambda n, v: Headers().__setitem__(n, v),
    "setlist": lambda n, v: Headers().setlist(n, ["ok", v]),
    "set-on-existing": lambda n, v: Headers([("X-Ok", "1")]).set(n, v),
}

BAD_VALUES = {
    "CR": "a\rb",
    "LF": "a\nInjected: yes",
    "NUL": "a\0b",
    "VT": "a\x0bb",
    "FF": "a\x0cb",
    "ESC": "\x1b[31mred",
    "DEL": "a\x7fb",
    "NEL": "a\x85b",
    "C1": "a\x9bb",
    "U+2028": "a\u2028b",
    "U+2029": "a\u2029b",
    "lone-surrogate": "a\ud800b",
    "low-surrogate-below-escapes": "a\udc7fb",
    "surrogate-above-escapes": "a\udd00b",
}


@pytest.mark.parametrize("bad", list(BAD_VALUES))
@pytest.mark.parametrize("path", list(HEADER_PATHS))
def test_a_header_value_with_a_control_character_or_lone_surrogate_is_refused(path: str, bad: str) -> None:
    with pytest.raises(ValueError, match=r"header values must not contain U\+"):
        HEADER_PATHS[path]("X-Ok", BAD_VALUES[bad])


@pytest.mark.parametrize("path", list(HEADER_PATHS))
def test_a_bytes_header_value_is_refused_with_a_hint_to_decode_it(path: str) -> None:
    with pytest.raises(TypeError, match=r"header values must be str, not bytes: decode it"):
        HEADER_PATHS[path]("X-Ok", b"abc")


@pytest.mark.parametrize("value", [5, 1.5, True, None, ["a"]], ids=repr)
@pytest.mark.parametrize("path", list(HEADER_PATHS))
def test_a_non_str_header_value_is_refused(path: str, value: object) -> None:
    with pytest.raises(TypeError, match="header values must be str"):
        HEADER_PATHS[path]("X-Ok", value)


def test_a_none_value_points_at_del() -> None:
    with pytest.raises(TypeError, match="use del"):
        Headers()["X-A"] = None


@pytest.mark.parametrize("name", ["", "X Space", "X:Colon", "X\r\nInjected", "caf\u00e9", "X\0", "(x)"], ids=repr)
@pytest.mark.parametrize("path", list(HEADER_PATHS))
def test_a_header_name_that_is_not_an_http_token_is_refused(path: str, name: str) -> None:
    with pytest.raises(ValueError, match="not a valid header name"):
        HEADER_PATHS[path](name, "ok")


@pytest.mark.parametrize("path", list(HEADER_PATHS))
def test_a_non_str_header_name_is_refused(path: str) -> None:
    with pytest.raises(TypeError, match="header names must be str, not bytes"):
        HEADER_PATHS[path](b"X-Ok", "ok")


def test_a_refused_value_leaves_the_headers_unchanged() -> None:
    h = Headers([("A", "1"), ("X-Req", "foo")])
    for change in (
        lambda: h.add("X-Req", "bad\n"),
        lambda: h.set("X-Req", "bad\r"),
        lambda: h.setlist("X-Req", ["fine", "bad\0"]),
    ):
        with pytest.raises(ValueError):
            change()
    assert h.items() == [("A", "1"), ("X-Req", "foo")]


ARG_PATHS: dict[str, Callable[[object, object], object]] = {
    "constructor-pairs": lambda n, v: Args([(n, v)]),
    "constructor-dict": lambda n, v: Args({n: v}),
    "add": lambda n, v: Args().add(n, v),
    "set": lambda n, v: Args().set(n, v),
    "setlist": lambda n, v: Args().setlist(n, [v]),
}


@pytest.mark.parametrize("path", list(ARG_PATHS))
def test_an_arg_with_a_lone_surrogate_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match=r"values must not contain U\+D800 \(a lone surrogate"):
        ARG_PATHS[path]("a", "x\ud800")
    with pytest.raises(ValueError, match=r"names must not contain U\+DFFF"):
        ARG_PATHS[path]("\udfff", "x")


@pytest.mark.parametrize("path", list(ARG_PATHS))
def test_a_bytes_or_non_str_arg_is_refused(path: str) -> None:
    with pytest.raises(TypeError, match="values must be str, not bytes: decode it"):
        ARG_PATHS[path]("a", b"1")
    with pytest.raises(TypeError, match="values must be str, not int"):
        ARG_PATHS[path]("a", 1)
    with pytest.raises(TypeError, match="names must be str"):
        ARG_PATHS[path](1, "1")


@pytest.mark.parametrize("path", list(ARG_PATHS))
def test_an_empty_arg_name_is_refused(path: str) -> None:
    with pytest.raises(ValueError, match="names must not be empty"):
        ARG_PATHS[path]("", "1")


# =============================================================================
# changes(): what differs from the pairs a mapping started from
# =============================================================================

SENT = [("host", "localhost"), ("x-req", "foo"), ("x-req", "bar"), ("x-resp", "cat")]


def test_reading_changes_nothing() -> None:
    h = Headers(SENT)
    _ = (h["HOST"], h.getlist("x-req"), list(h), "x-resp" in h, h.get("nope"), h.keys(), len(h), h.copy())
    assert h.changes() == []


def test_setting_a_value_it_already_has_changes_nothing() -> None:
    h = Headers(SENT)
    h["Host"] = "localhost"
    h.setlist("X-Req", ["foo", "bar"])
    assert h.changes() == []


def test_changes_name_every_new_value_and_the_names_gone() -> None:
    h = Headers(SENT)
    h["X-Req"] = "new"
    h.add("x-added", "1")
    del h["X-RESP"]
    assert h.changes() == [("X-Req", ["new"]), ("x-added", ["1"]), ("x-resp", None)]


def test_a_mapping_given_in_place_of_another_is_compared_with_what_that_one_started_from() -> None:
    old = Headers(SENT)
    new = Headers({"host": "localhost", "x-resp": "dog", "x-added": "1"}, load=old.sent)
    assert sorted(new.changes(), key=str) == sorted([("x-resp", ["dog"]), ("x-added", ["1"]), ("x-req", None)], key=str)


def test_args_changes_are_case_sensitive() -> None:
    a = Args([("a", "1"), ("b", "2")])
    a["A"] = "1"
    del a["b"]
    assert a.changes() == [("A", ["1"]), ("b", None)]
